"""Statistics of every pre-training recipe's batches as ``ptft pretrain`` builds them (the run's
``BatchSource`` over token shards of the embedded corpus), each over ≥ 100k tokens: BERT's NSP
pairs, whole-word masking under each tokenizer's word-start convention, SpanBERT's span masking
with span-level 80/10/10, BART's noisings alone and combined, and the T5 comparison variants."""

import string
import unicodedata

import numpy as np
import pytest
import torch

from ptft_fast.data.masking import MaskingConfig, choose_tokens, span_length_distribution
from ptft_fast.data.shards import ShardConfig, TokenShards, write_shards
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource

IGNORE = -100


@pytest.fixture(scope="module")
def shards(corpus, wordpiece, bpe, unigram, tmp_path_factory):
    """kind → (TokenShards of the embedded corpus, tokenizer)."""
    toks = {"wordpiece": wordpiece, "bpe": bpe, "unigram": unigram}
    made = {}

    def get(kind):
        if kind not in made:
            out = tmp_path_factory.mktemp(f"shards-{kind}")
            write_shards(corpus, toks[kind], out, ShardConfig(num_workers=1, progress=False))
            made[kind] = (TokenShards(out), toks[kind])
        return made[kind]

    return get


def _batches(kind, shards, objective, min_tokens, batch=64, seq_len=128, **cfg):
    """Batches of ``objective`` until their real tokens reach ``min_tokens``."""
    data, tok = shards(kind)
    cfg = TrainConfig(objective=objective, seq_len=seq_len, **cfg)
    src = BatchSource(objective, data, tok, cfg, seed=0)
    out, n = [], 0
    while n < min_tokens:
        b = src.next(batch, seq_len)
        out.append(b)
        n += int(b["attention_mask"].sum())
    return out, tok


def _originals(b):
    orig = b["input_ids"].clone()
    chosen = b["labels"] != IGNORE
    orig[chosen] = b["labels"][chosen]
    return orig, chosen


# ---------------------------------------------------------------- BERT: MLM + NSP
def test_nsp_pairs_from_shards(shards, corpus):
    batches, tok = _batches("wordpiece", shards, "mlm+nsp", 1_000_000, mlm_probability=0.15)
    docs = [np.asarray(d) for d in tok.encode_batch(corpus)]
    index = {}  # 6-gram → [(document, position)]: where a pair's text can come from
    for d, ids in enumerate(docs):
        for p in range(len(ids) - 6):
            index.setdefault(tuple(ids[p : p + 6].tolist()), []).append((d, p))
    labels, n_cand, n_chosen, contiguous, other_doc = [], 0, 0, {0: [0, 0], 1: [0, 0]}, [0, 0]
    special = torch.from_numpy(tok.special_mask_table())
    for b in batches:
        orig, chosen = _originals(b)
        real = b["attention_mask"].bool()
        cand = ~special[orig] & real
        assert not (chosen & ~cand).any(), "[CLS]/[SEP]/padding chosen"
        n_cand, n_chosen = n_cand + int(cand.sum()), n_chosen + int(chosen.sum())
        labels += b["next_sentence_label"].tolist()
        for r in range(len(orig)):
            ids = orig[r][real[r]].tolist()
            seps = [i for i, t in enumerate(ids) if t == tok.sep_id]
            assert ids[0] == tok.cls_id and len(seps) == 2 and seps[1] == len(ids) - 1
            types = b["token_type_ids"][r][real[r]].tolist()
            assert types == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
            a, bb = ids[1 : seps[0]], ids[seps[0] + 1 : -1]
            label = int(b["next_sentence_label"][r])
            if len(a) >= 6 and len(ids) < 128:  # untruncated: is A + B running text of one document?
                hits = index.get(tuple(a[:6]), [])
                if hits:
                    whole = a + bb
                    contiguous[label][0] += any(
                        docs[d][p : p + len(whole)].tolist() == whole for d, p in hits
                    )
                    contiguous[label][1] += 1
                doc_a = {d for d, _ in hits}
                doc_b = {d for d, _ in index.get(tuple(bb[:6]), [])}
                if label == 1 and len(doc_a) == 1 and len(doc_b) == 1:  # where each half comes from
                    other_doc[0] += doc_a != doc_b
                    other_doc[1] += 1
    assert n_cand >= 100_000
    assert len(labels) >= 8_000
    assert abs(np.mean(labels) - 0.5) < 0.02  # BERT: 50 % IsNext / 50 % NotNext
    assert abs(n_chosen / n_cand - 0.15) < 0.01
    assert contiguous[0][1] > 300 and contiguous[1][1] > 300
    assert contiguous[0][0] / contiguous[0][1] > 0.95  # IsNext: B continues A in the document
    assert contiguous[1][0] / contiguous[1][1] < 0.05  # NotNext: B does not continue A
    assert other_doc[1] > 100 and other_doc[0] == other_doc[1]  # NotNext: B comes from another document


def test_nsp_stream_resumes_exactly(shards):
    data, tok = shards("wordpiece")
    cfg = TrainConfig(objective="mlm+nsp", seq_len=64)
    a = BatchSource("mlm+nsp", data, tok, cfg, seed=3)
    for _ in range(5):
        a.next(16, 64)
    state = a.state_dict()
    b = BatchSource("mlm+nsp", data, tok, cfg, seed=3)
    b.load_state_dict(state)
    for _ in range(3):
        x, y = a.next(16, 64), b.next(16, 64)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ---------------------------------------------------------------- whole-word masking
def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _reference_word_starts(text: str, offsets, kind: str) -> np.ndarray:
    """Word starts from the text alone: a token starts a word when whitespace precedes it or
    begins it (WordPiece also splits off punctuation, as BERT's pre-tokenizer does)."""
    starts = np.zeros(len(offsets), dtype=bool)
    prev_end = 0
    for i, (s, e) in enumerate(offsets):
        piece = text[s:e]
        gap = text[prev_end:s] if i else " "
        starts[i] = any(c.isspace() for c in gap) or (piece[:1].isspace())
        if kind == "wordpiece" and i:
            starts[i] |= _is_punct(piece[:1]) or _is_punct(text[prev_end - 1 : prev_end] or "a")
        prev_end = e
    return starts


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_whole_word_masking_keeps_each_tokenizers_words_whole(kind, corpus, wordpiece, bpe, unigram):
    tok = {"wordpiece": wordpiece, "bpe": bpe, "unigram": unigram}[kind]
    table, special = tok.word_start_table(), tok.special_mask_table()
    gen = torch.Generator().manual_seed(0)
    cfg = MaskingConfig(strategy="whole_word")
    n_cand = n_chosen = n_words = n_units = split = multi = 0
    for text in corpus:
        enc = tok.backend.encode(text, add_special_tokens=False)
        if len(enc.ids) < 2:
            continue
        ids = torch.tensor([enc.ids])
        cand = ~special[enc.ids]  # <unk> and other special tokens are never masked
        ref = _reference_word_starts(text, enc.offsets, kind)
        mine = table[enc.ids] & cand
        mine[0] = True
        # a unit of the masking never starts inside a word of the text
        assert not (mine & ~ref).any(), [t for t, m, r in zip(enc.tokens, mine, ref) if m and not r][:5]
        chosen = choose_tokens(ids, torch.from_numpy(cand)[None], cfg, gen, table)[0].numpy()
        word = np.cumsum(ref) - 1
        for w in np.unique(word):
            sel = chosen[(word == w) & cand]  # the maskable tokens of the word
            split += bool(sel.any() and not sel.all())
            multi += bool(sel.all() and len(sel) > 1)
        n_cand, n_chosen = n_cand + int(cand.sum()), n_chosen + int(chosen.sum())
        n_words, n_units = n_words + int(ref.sum()), n_units + int(mine.sum())
    assert n_cand >= 100_000
    assert split == 0, "a word of the text was partly masked"
    assert multi > 500  # multi-token words were masked as units
    assert n_units / n_words > 0.85  # the units are words, not whole phrases
    assert abs(n_chosen / n_cand - 0.15) < 0.01


# ---------------------------------------------------------------- SpanBERT
def test_spanbert_span_masking_with_span_level_replacement(shards):
    batches, tok = _batches(
        "wordpiece", shards, "spanbert", 110_000, batch=16, seq_len=512, mlm_probability=0.15
    )
    special = torch.from_numpy(tok.special_mask_table())
    table = tok.word_start_table()
    n_cand = n_chosen = 0
    kinds = {"mask": 0, "random": 0, "same": 0, "mixed": 0}
    lengths = []
    for b in batches:
        orig, chosen = _originals(b)
        cand = ~special[orig] & b["attention_mask"].bool()
        n_cand, n_chosen = n_cand + int(cand.sum()), n_chosen + int(chosen.sum())
        out = b["input_ids"]
        for r in range(len(orig)):
            ch = chosen[r].numpy()
            edges = np.flatnonzero(np.diff(np.concatenate([[0], ch.astype(int), [0]])))
            for s, e in zip(edges[::2], edges[1::2]):  # each run of chosen positions is one span
                o, x = orig[r, s:e], out[r, s:e]
                is_mask = x == tok.mask_id
                if is_mask.all():
                    kinds["mask"] += 1
                elif is_mask.any():
                    kinds["mixed"] += 1
                elif torch.equal(o, x):
                    kinds["same"] += 1
                else:
                    kinds["random"] += 1
                ws = table[o.numpy()]
                ws[0] = True
                lengths.append(int(ws.sum()))  # in words
    spans = sum(kinds.values())
    assert n_cand >= 100_000
    assert kinds["mixed"] == 0, "a span mixed [MASK] with other tokens (80/10/10 is per span)"
    assert abs(kinds["mask"] / spans - 0.8) < 0.02
    assert abs(kinds["random"] / spans - 0.1) < 0.02
    assert abs(kinds["same"] / spans - 0.1) < 0.02
    assert abs(n_chosen / n_cand - 0.15) < 0.01
    dist = span_length_distribution(0.2, 10)
    expected = float((np.arange(1, 11) * dist).sum())  # 3.8 words
    assert abs(np.mean(lengths) / expected - 1) < 0.06
    assert max(lengths) <= 10


# ---------------------------------------------------------------- BART noisings
def _bart_pairs(shards, noise, min_tokens=100_000):
    batches, tok = _batches("bpe", shards, "infill", min_tokens, bart_noise=noise)
    pairs = []
    for b in batches:
        for r in range(len(b["input_ids"])):
            src = b["input_ids"][r][b["attention_mask"][r].bool()].numpy()[1:-1]  # <s> … </s>
            tgt = b["labels"][r][b["labels"][r] != IGNORE].numpy()[1:-1]
            pairs.append((src, tgt))
    assert sum(len(t) for _, t in pairs) >= min_tokens
    return pairs, tok


def test_bart_token_masking_alone(shards):
    pairs, tok = _bart_pairs(shards, "mask")
    masks = sum(int((s == tok.mask_id).sum()) for s, _ in pairs)
    assert all(len(s) == len(t) and ((s == t) | (s == tok.mask_id)).all() for s, t in pairs)
    assert abs(masks / sum(len(t) for _, t in pairs) - 0.3) < 0.01


def test_bart_token_deletion_alone(shards):
    pairs, tok = _bart_pairs(shards, "delete")
    for s, t in pairs[:200]:  # the source is the target with tokens left out, in order
        it = iter(t.tolist())
        assert all(any(x == y for y in it) for x in s.tolist())
    assert abs(sum(len(s) for s, _ in pairs) / sum(len(t) for _, t in pairs) - 0.7) < 0.01
    assert not any((s == tok.mask_id).any() for s, _ in pairs)


def test_bart_text_infilling_alone(shards):
    pairs, tok = _bart_pairs(shards, "infill")
    n = sum(len(t) for _, t in pairs)
    masks = sum(int((s == tok.mask_id).sum()) for s, _ in pairs)
    covered = sum(len(t) - (len(s) - int((s == tok.mask_id).sum())) for s, t in pairs)
    assert abs(covered / n - 0.3) < 0.01
    assert abs(covered / masks / 3.0 - 1) < 0.05  # span lengths ~ Poisson(λ = 3)


def test_bart_document_rotation_alone(shards):
    pairs, _ = _bart_pairs(shards, "rotate")
    shifts = []
    for s, t in pairs:
        k = next(k for k in range(len(t)) if np.array_equal(np.roll(t, -k), s))
        shifts.append(k / len(t))
    assert abs(np.mean(shifts) - 0.5) < 0.03  # the start token is uniform over the row


def test_bart_sentence_permutation_alone(shards):
    pairs, _ = _bart_pairs(shards, "permute")
    assert all(np.array_equal(np.sort(s), np.sort(t)) for s, t in pairs)
    assert sum(not np.array_equal(s, t) for s, t in pairs) > 0.5 * len(pairs)


def test_bart_masking_then_deletion_composed(shards):
    """mask then delete, deletion sparing <mask>: 0.3 n masks stay, 0.7 · 0.7 n tokens are kept."""
    pairs, tok = _bart_pairs(shards, "mask,delete")
    n = sum(len(t) for _, t in pairs)
    kept = sum(len(s) for s, _ in pairs)
    masks = sum(int((s == tok.mask_id).sum()) for s, _ in pairs)
    assert abs(kept / n - (0.3 + 0.7 * 0.7)) < 0.01
    assert abs(masks / n - 0.3) < 0.01


def test_bart_paper_default_infilling_with_permutation(shards):
    pairs, tok = _bart_pairs(shards, "infill,permute")
    n = sum(len(t) for _, t in pairs)
    covered = sum(len(t) - (len(s) - int((s == tok.mask_id).sum())) for s, t in pairs)
    assert abs(covered / n - 0.3) < 0.01


# ---------------------------------------------------------------- T5 comparison variants
def test_t5_bert_style_objective(shards):
    batches, tok = _batches("unigram", shards, "seq2seq-mlm", 100_000)
    special = tok.special_mask_table()
    n = corrupted = masked = rand = 0
    for b in batches:
        for r in range(len(b["input_ids"])):
            x = b["input_ids"][r][b["attention_mask"][r].bool()].numpy()
            y = b["labels"][r][b["labels"][r] != IGNORE].numpy()
            assert len(x) == len(y) and x[-1] == y[-1] == tok.eos_id  # the decoder rebuilds the original
            hit = x[:-1] != y[:-1]
            n, corrupted = n + len(y) - 1, corrupted + int(hit.sum())
            masked += int((x[:-1][hit] == tok.sentinel_ids[0]).sum())
            picks = x[:-1][hit & (x[:-1] != tok.sentinel_ids[0])]
            rand += len(picks)
            assert not special[picks].any()
    assert n >= 100_000
    assert abs(corrupted / n - 0.15) < 0.01
    assert abs(masked / corrupted - 0.9) < 0.015
    assert abs(rand / corrupted - 0.1) < 0.015


def test_t5_prefix_lm_objective(shards):
    batches, tok = _batches("unigram", shards, "seq2seq-prefix-lm", 100_000)
    cuts, n = [], 0
    for b in batches:
        for r in range(len(b["input_ids"])):
            x = b["input_ids"][r][b["attention_mask"][r].bool()].numpy()
            y = b["labels"][r][b["labels"][r] != IGNORE].numpy()
            assert x[-1] == y[-1] == tok.eos_id and len(x) >= 2 and len(y) >= 2
            cuts.append((len(x) - 1) / (len(x) + len(y) - 3))  # prefix share of the row
            n += len(x) + len(y) - 2
            assert (b["decoder_input_ids"][r, 1 : len(y)].numpy() == y[:-1]).all()
    assert n >= 100_000
    q = np.quantile(cuts, [0.25, 0.5, 0.75])  # the split point is uniform over the row
    assert np.allclose(q, [0.25, 0.5, 0.75], atol=0.03)


def test_t5_deshuffling_objective(shards):
    batches, tok = _batches("unigram", shards, "deshuffle", 100_000)
    n = same = 0
    for b in batches:
        for r in range(len(b["input_ids"])):
            x = b["input_ids"][r][b["attention_mask"][r].bool()].numpy()
            y = b["labels"][r][b["labels"][r] != IGNORE].numpy()
            assert np.array_equal(np.sort(x), np.sort(y)) and x[-1] == y[-1] == tok.eos_id
            n, same = n + len(y) - 1, same + int((x[:-1] == y[:-1]).sum())
    assert n >= 100_000
    assert same / n < 0.1  # shuffled: few tokens stay in place (repeated tokens can)
