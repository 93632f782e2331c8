"""MLM (BERT recipe, whole-word, fixed-count, SpanBERT spans, dynamic/static) and NSP."""

import functools
import operator

import numpy as np
import pytest
import torch

from ptft_fast.data.masking import MaskingConfig, span_length_distribution
from ptft_fast.data.mlm import MLMCollator, MLMConfig
from ptft_fast.data.nsp import NSPConfig, build_nsp_examples, split_sentences


def _collate(tok, examples, cfg, batch=64):
    coll = MLMCollator(tok, cfg)
    return [coll(examples[i : i + batch]) for i in range(0, len(examples), batch)]


def _originals(batch):
    orig = batch["input_ids"].clone()
    chosen = batch["labels"] != -100
    orig[chosen] = batch["labels"][chosen]
    return orig, chosen


def test_bert_recipe_statistics(wordpiece, wp_docs, chunks):
    tok = wordpiece
    examples = chunks(wp_docs, 126)
    special = torch.from_numpy(tok.special_mask_table())
    n_cand = n_chosen = n_mask = n_rand = n_same = 0
    for b in _collate(tok, examples, MLMConfig()):
        orig, chosen = _originals(b)
        cand = ~special[orig] & b["attention_mask"].bool()
        assert not (chosen & ~cand).any(), "special tokens or padding were chosen"
        assert (orig[:, 0] == tok.cls_id).all()
        out = b["input_ids"]
        n_cand += int(cand.sum())
        n_chosen += int(chosen.sum())
        n_mask += int((chosen & (out == tok.mask_id)).sum())
        n_same += int((chosen & (out == orig)).sum())
        rand = chosen & (out != tok.mask_id) & (out != orig)
        n_rand += int(rand.sum())
        assert not special[out[rand]].any(), "a random replacement is a special token"
        assert (out[~chosen] == orig[~chosen]).all()
    assert n_cand >= 100_000
    assert abs(n_chosen / n_cand - 0.15) < 0.01
    assert abs(n_mask / n_chosen - 0.8) < 0.01
    assert abs(n_rand / n_chosen - 0.1) < 0.01
    assert abs(n_same / n_chosen - 0.1) < 0.01


def test_fixed_count_gives_static_shapes(wordpiece, wp_docs, chunks):
    examples = [*chunks(wp_docs, 100)[:64], [7, 8, 9]]
    cfg = MLMConfig(masking=MaskingConfig(fixed_count=True), max_length=128)
    b = MLMCollator(wordpiece, cfg)(examples)
    assert b["input_ids"].shape == (65, 128)
    assert b["masked_positions"].shape == b["masked_labels"].shape == (65, 20)  # ceil(0.15 * 128)
    counts = (b["labels"] != -100).sum(1)
    assert counts[:64].tolist() == [15] * 64  # round(0.15 * 100) of the 100 non-special tokens
    assert counts[64] == 0  # round(0.15 * 3) = 0
    for i in range(65):
        n = int(counts[i])
        pos = b["masked_positions"][i, :n]
        assert (b["labels"][i, pos] == b["masked_labels"][i, :n]).all()
        assert (b["masked_labels"][i, n:] == -100).all()


def _words(tok, ids_row, cand_row):
    """Word index per candidate position (-1 elsewhere)."""
    ws = tok.word_start_table()
    word = -1
    out = []
    prev_cand = False
    for t, c in zip(ids_row, cand_row):
        if c and (ws[t] or not prev_cand):
            word += 1
        out.append(word if c else -1)
        prev_cand = c
    return np.array(out)


@pytest.mark.parametrize("fixed", [False, True])
def test_whole_word_masking_masks_whole_words(wordpiece, wp_docs, chunks, fixed):
    tok = wordpiece
    examples = chunks(wp_docs, 126)
    cfg = MLMConfig(masking=MaskingConfig(strategy="whole_word", fixed_count=fixed))
    special = torch.from_numpy(tok.special_mask_table())
    n_cand = n_chosen = 0
    multi = 0
    for b in _collate(tok, examples, cfg):
        orig, chosen = _originals(b)
        cand = ~special[orig] & b["attention_mask"].bool()
        n_cand += int(cand.sum())
        n_chosen += int(chosen.sum())
        for r in range(orig.shape[0]):
            words = _words(tok, orig[r].tolist(), cand[r].tolist())
            ch = chosen[r].numpy()
            for w in np.unique(words[words >= 0]):
                sel = ch[words == w]
                assert sel.all() or not sel.any(), "a word was partly masked"
                multi += int(sel.all() and len(sel) > 1)
            if fixed:
                assert ch.sum() <= round(cand[r].sum().item() * 0.15)
    assert multi > 100  # multi-token words were masked as units
    assert abs(n_chosen / n_cand - 0.15) < 0.01


def test_span_masking_statistics(wordpiece, wp_docs, chunks):
    tok = wordpiece
    examples = chunks(wp_docs, 510)
    cfg = MLMConfig(masking=MaskingConfig(strategy="span"))
    special = torch.from_numpy(tok.special_mask_table())
    n_cand = n_chosen = 0
    span_lengths = []
    for b in _collate(tok, examples, cfg, batch=16):
        orig, chosen = _originals(b)
        cand = ~special[orig] & b["attention_mask"].bool()
        n_cand += int(cand.sum())
        n_chosen += int(chosen.sum())
        for r in range(orig.shape[0]):
            words = _words(tok, orig[r].tolist(), cand[r].tolist())
            ch = chosen[r].numpy()
            picked = [w for w in np.unique(words[words >= 0]) if ch[words == w].all()]
            # runs of consecutive chosen words are the spans (spans never touch)
            run = 0
            for w in range(words.max() + 2):
                if w in picked:
                    run += 1
                elif run:
                    span_lengths.append(run)
                    run = 0
    assert n_cand >= 100_000
    assert abs(n_chosen / n_cand - 0.15) < 0.01
    dist = span_length_distribution(0.2, 10)
    expected = float((np.arange(1, 11) * dist).sum())  # ≈ 3.8 words
    assert abs(np.mean(span_lengths) / expected - 1) < 0.05
    assert max(span_lengths) <= 10


def test_dynamic_vs_static_masking(wordpiece, wp_docs, chunks):
    examples = chunks(wp_docs, 60)[:32]
    dyn = MLMCollator(wordpiece, MLMConfig(dynamic=True))
    assert not torch.equal(dyn(examples)["labels"], dyn(examples)["labels"])
    static = MLMCollator(wordpiece, MLMConfig(dynamic=False))
    a, b = static(examples), static(examples[::-1])
    assert torch.equal(a["labels"], b["labels"].flip(0))
    assert torch.equal(a["input_ids"], b["input_ids"].flip(0))


@pytest.fixture(scope="module")
def sentence_docs(corpus, wordpiece):
    return [[wordpiece.encode(s) for s in split_sentences(d)] for d in corpus]


def test_nsp_pairs_half_random(sentence_docs, wordpiece):
    tok = wordpiece
    examples = []
    for seed in range(12):
        examples += build_nsp_examples(sentence_docs, tok.cls_id, tok.sep_id, NSPConfig(seed=seed))
    assert len(examples) >= 10_000
    labels = np.array([e["next_sentence_label"] for e in examples])
    assert abs(labels.mean() - 0.5) < 0.01
    doc_streams = [functools.reduce(operator.iadd, d, []) for d in sentence_docs]
    checked = 0
    for e in examples[:2000]:
        ids, tt = e["input_ids"], e["token_type_ids"]
        assert len(ids) <= 128 and len(ids) == len(tt)
        s1 = ids.index(tok.sep_id)
        assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
        assert tt == [0] * (s1 + 1) + [1] * (len(ids) - s1 - 1)
        if e["next_sentence_label"] == 0 and len(ids) < 128:  # untruncated: A then B is contiguous text
            ab = ids[1:s1] + ids[s1 + 1 : -1]
            assert any(_contains(s, ab) for s in doc_streams)
            checked += 1
    assert checked > 100


def _contains(stream, seq):
    n = len(seq)
    first = seq[0]
    return any(stream[i : i + n] == seq for i, t in enumerate(stream) if t == first)


def test_mlm_collator_with_nsp(sentence_docs, wordpiece):
    tok = wordpiece
    examples = build_nsp_examples(sentence_docs, tok.cls_id, tok.sep_id)[:64]
    b = MLMCollator(tok, MLMConfig(nsp=True))(examples)
    assert b["next_sentence_label"].tolist() == [e["next_sentence_label"] for e in examples]
    chosen = b["labels"] != -100
    assert not (chosen & (b["input_ids"] == tok.sep_id) & (b["labels"] == tok.sep_id)).any()
    assert (
        b["token_type_ids"][0, : len(examples[0]["input_ids"])] == torch.tensor(examples[0]["token_type_ids"])
    ).all()
    with pytest.raises(ValueError, match="next_sentence_label"):
        MLMCollator(tok, MLMConfig(nsp=True))([{"input_ids": [2, 5, 3]}])


@pytest.mark.parametrize(
    "cfg",
    [
        MLMConfig(seed=3),
        MLMConfig(masking=MaskingConfig(strategy="whole_word"), seed=4),
        MLMConfig(masking=MaskingConfig(fixed_count=True), max_length=40, seed=5),
    ],
)
def test_collate_rows_equals_the_list_path(wordpiece, wp_docs, cfg):
    """The array path (packed rows) gives the list path's batch exactly, ragged rows included."""
    rng = np.random.default_rng(0)
    rows = [np.asarray(d[:38], dtype=np.int64) for d in wp_docs[:64]]
    rows = [r[: int(rng.integers(1, len(r) + 1))] if i % 3 else r for i, r in enumerate(rows)]
    lengths = np.array([len(r) for r in rows])
    body = np.full((len(rows), 38), 9999, dtype=np.int64)  # junk after each row's length
    for i, r in enumerate(rows):
        body[i, : len(r)] = r
    want = MLMCollator(wordpiece, cfg)(rows)
    got = MLMCollator(wordpiece, cfg).collate_rows(body, lengths)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    if "masked_positions" in got:  # the chosen positions, in order, then 0-padding
        for i in range(len(rows)):
            pos = torch.nonzero(got["labels"][i] != -100).squeeze(1)
            assert got["masked_positions"][i, : len(pos)].tolist() == pos.tolist()
            assert (got["masked_positions"][i, len(pos) :] == 0).all()
