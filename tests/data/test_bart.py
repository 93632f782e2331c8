"""BART noising: each of the five transformations, composition and the collator."""

import numpy as np
import pytest

from ptft_fast.data.bart import (
    BartCollator,
    BartNoiseConfig,
    BartNoiser,
    document_rotation,
    poisson_span_lengths,
    sentence_end_table,
    sentence_permutation,
    text_infilling,
    token_deletion,
    token_masking,
)

MASK = 4


@pytest.fixture(scope="module")
def bpe_docs(bpe, corpus):
    return [np.asarray(ids, dtype=np.int64) for ids in bpe.encode_batch(corpus)]


def test_text_infilling_statistics(bpe_docs, bpe):
    rng = np.random.default_rng(0)
    n_in = n_masked = n_masks = 0
    for _ in range(2):
        for doc in bpe_docs:
            for piece in np.array_split(doc, max(1, len(doc) // 512)):
                out = text_infilling(piece, 0.3, bpe.mask_id, rng)
                masks = int((out == bpe.mask_id).sum())
                n_in += len(piece)
                n_masked += len(piece) - (len(out) - masks)
                n_masks += masks
    assert n_in >= 100_000
    assert abs(n_masked / n_in - 0.3) < 0.01
    assert abs(n_masked / n_masks / 3.0 - 1) < 0.05  # mean span length = λ


def _reference_infilling(tokens, spans, items, mask_id):
    """Walk the shuffled items: a kept item copies the next token, a span skips its length."""
    out, src, it = [], 0, iter(spans)
    for is_span in items:
        if is_span:
            out.append(mask_id)
            src += int(next(it))
        else:
            out.append(int(tokens[src]))
            src += 1
    return out


def test_text_infilling_equals_the_item_walk():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        toks = rng.integers(10, 500, size=int(rng.integers(1, 120)))
        got = text_infilling(toks, 0.3, MASK, np.random.default_rng(seed + 1))
        # replay the same draws: span lengths, then the shuffle of kept tokens and spans
        ref_rng = np.random.default_rng(seed + 1)
        num = round(0.3 * len(toks))
        if num == 0:
            assert got.tolist() == toks.tolist()
            continue
        spans = poisson_span_lengths(num, 3.0, ref_rng)
        items = np.concatenate([np.zeros(len(toks) - num, dtype=bool), np.ones(len(spans), dtype=bool)])
        ref_rng.shuffle(items)
        assert got.tolist() == _reference_infilling(toks, spans, items, MASK)


def test_infilling_layout_and_zero_length_spans():
    rng = np.random.default_rng(1)
    lengths = np.concatenate([poisson_span_lengths(10_000, 3.0, rng) for _ in range(10)])
    assert (lengths == 0).mean() == pytest.approx(np.exp(-3), abs=0.01)
    toks = np.arange(10, 110)
    for _ in range(100):
        out = text_infilling(toks, 0.3, MASK, rng)
        kept = out[out != MASK]
        assert np.all(np.diff(kept) > 0)  # kept tokens stay in order
        assert len(kept) == 70
    # zero-length spans insert a <mask> between kept tokens with nothing removed
    seen_insert = False
    for _ in range(200):
        out = text_infilling(toks, 0.3, MASK, rng)
        pos = np.flatnonzero(out == MASK)
        for p in pos:
            if (
                0 < p < len(out) - 1
                and out[p - 1] != MASK
                and out[p + 1] != MASK
                and out[p + 1] == out[p - 1] + 1
            ):
                seen_insert = True
    assert seen_insert


def test_token_masking_and_deletion_rates(bpe_docs):
    rng = np.random.default_rng(2)
    toks = np.concatenate(bpe_docs)
    toks = toks[toks != MASK]
    masked = token_masking(toks, 0.3, MASK, rng)
    assert abs((masked == MASK).mean() - 0.3) < 0.01
    assert (masked[masked != MASK] == toks[masked != MASK]).all()
    kept = token_deletion(toks, 0.2, MASK, rng)
    assert abs(1 - len(kept) / len(toks) - 0.2) < 0.01
    with_masks = np.array([MASK, 7, MASK, 8] * 1000)
    assert (token_deletion(with_masks, 0.9, MASK, rng) == MASK).sum() == 2000  # <mask> never deleted


def test_sentence_permutation_and_rotation(bpe):
    table = sentence_end_table(bpe.backend.get_vocab(), bpe.vocab_size)
    text = "First one. Second here! Third? Fourth and last."
    toks = np.asarray(bpe.encode(text))
    rng = np.random.default_rng(3)
    outs = {tuple(sentence_permutation(toks, table, rng)) for _ in range(200)}
    assert len(outs) == 24  # 4 sentences, every order reached
    for o in outs:
        text_o = bpe.decode(list(o)).replace("!", ".").replace("?", ".")
        assert sorted(s.strip() for s in text_o.split(".") if s.strip()) == [
            "First one",
            "Fourth and last",
            "Second here",
            "Third",
        ]
    toks = np.arange(10, 34)
    rot = document_rotation(toks, rng)
    k = int(np.flatnonzero(np.all([np.roll(toks, -i) == rot for i in range(len(toks))], axis=1))[0])
    assert np.array_equal(np.roll(toks, -k), rot)
    starts = [int(document_rotation(toks, rng)[0]) - 10 for _ in range(3000)]
    assert abs(np.mean(starts) / ((len(toks) - 1) / 2) - 1) < 0.05  # uniform start


def test_composed_noiser_and_collator(bpe, bpe_docs):
    table = sentence_end_table(bpe.backend.get_vocab(), bpe.vocab_size)
    cfg = BartNoiseConfig(
        mask_ratio=0.1, delete_ratio=0.1, infill_ratio=0.3, permute_sentences=True, rotate_document=True
    )
    noiser = BartNoiser(bpe.mask_id, table, cfg)
    coll = BartCollator(noiser, bpe.bos_id, bpe.eos_id, bpe.pad_id, max_length=256)
    docs = [d[:254] for d in bpe_docs[:16]]
    b = coll(docs)
    for i, d in enumerate(docs):
        lab = b["labels"][i]
        lab = lab[lab != -100].tolist()
        assert lab == [bpe.bos_id, *d.tolist(), bpe.eos_id]
        inp = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
        assert inp[0] == bpe.bos_id and inp[-1] == bpe.eos_id and bpe.mask_id in inp
        assert len(inp) < len(lab)  # infilling + deletion shorten the source
    assert (b["decoder_input_ids"][:, 0] == bpe.eos_id).all()  # BART starts decoding from </s>
    assert (
        b["decoder_input_ids"][:, 1:][b["labels"][:, :-1] != -100]
        == b["labels"][:, :-1][b["labels"][:, :-1] != -100]
    ).all()
