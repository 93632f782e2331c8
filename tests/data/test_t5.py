"""T5 span corruption: lengths, layout, sentinels and statistics."""

import numpy as np
import pytest

from ptft_fast.data.t5 import (
    T5Config,
    T5SpanCorruptionCollator,
    random_spans_noise_mask,
    random_spans_noise_masks,
    span_corrupt,
    t5_lengths,
    t5_raw_length,
)


@pytest.mark.parametrize("inputs_length", [16, 64, 100, 128, 512, 1024])
def test_raw_length_fits_exactly(inputs_length):
    raw, targets = t5_raw_length(inputs_length)
    assert t5_lengths(raw) == (inputs_length, targets)
    assert t5_lengths(raw + 1)[0] > inputs_length
    if inputs_length == 512:
        # 568 raw → 85 noise tokens in 28 spans: 483 + 28 + </s> = 512; 85 + 29 sentinels + </s> = 115
        assert (raw, targets) == (568, 115)


def test_layout_and_sentinel_order(unigram):
    tok = unigram
    toks = list(range(100, 140))
    mask = np.zeros(40, dtype=bool)
    mask[[3, 4, 10, 30, 31, 32]] = True
    s = tok.sentinel_ids
    inputs, targets = (x.tolist() for x in span_corrupt(toks, mask, s, tok.eos_id))
    assert inputs == [
        100,
        101,
        102,
        s[0],
        *range(105, 110),
        s[1],
        *range(111, 130),
        s[2],
        *range(133, 140),
        tok.eos_id,
    ]
    assert targets == [s[0], 103, 104, s[1], 110, s[2], 130, 131, 132, s[3], tok.eos_id]
    assert s[0] > s[1] > s[2] > s[3]  # <extra_id_0> has the highest id, as in T5
    assert tok.backend.id_to_token(targets[0]) == "<extra_id_0>"


def _reference_span_corrupt(tokens, mask, sentinel_ids, eos_id):
    """The layout token by token: a span's first token emits its sentinel into both streams."""
    inputs, targets, k, prev = [], [], -1, False
    for tok, noise in zip(tokens, mask):
        if noise and not prev:
            k += 1
            inputs.append(sentinel_ids[k])
            targets.append(sentinel_ids[k])
        (targets if noise else inputs).append(tok)
        prev = bool(noise)
    return [*inputs, eos_id], [*targets, sentinel_ids[k + 1], eos_id]


def test_span_corrupt_equals_the_token_by_token_layout():
    rng = np.random.default_rng(0)
    sentinels = list(range(999, 899, -1))
    for _ in range(300):
        n = int(rng.integers(2, 200))
        toks = rng.integers(0, 800, size=n)
        mask = random_spans_noise_mask(n, float(rng.uniform(0.05, 0.5)), float(rng.uniform(1, 5)), rng)
        got = [x.tolist() for x in span_corrupt(toks, mask, sentinels, 1)]
        assert got == list(_reference_span_corrupt(toks.tolist(), mask, sentinels, 1))
    with pytest.raises(ValueError, match="more spans than the 2 sentinels"):
        span_corrupt([5, 6, 7, 8], np.array([True, False, True, False]), [100, 99], 1)


def test_collator_statistics_and_reconstruction(unigram, corpus):
    tok = unigram
    cfg = T5Config(inputs_length=128)
    coll = T5SpanCorruptionCollator(tok.sentinel_ids, tok.eos_id, tok.pad_id, cfg)
    stream = [t for ids in tok.encode_batch(corpus) for t in ids]
    raw = coll.raw_length
    examples = [stream[i : i + raw] for i in range(0, len(stream) - raw + 1, raw)]
    sentinels = set(tok.sentinel_ids)
    assert not sentinels & set(stream)
    n_tokens = n_noise = 0
    spans = []
    for i in range(0, len(examples), 64):
        batch = examples[i : i + 64]
        b = coll(batch)
        assert b["input_ids"].shape == (len(batch), 128)
        assert b["labels"].shape == (len(batch), coll.targets_length)
        assert (b["attention_mask"] == 1).all()  # raw_length examples fill the inputs exactly
        assert (b["labels"] != -100).all()
        assert (b["decoder_input_ids"][:, 0] == tok.pad_id).all()
        assert (b["decoder_input_ids"][:, 1:] == b["labels"][:, :-1]).all()
        for ex, inp, tgt in zip(batch, b["input_ids"].tolist(), b["labels"].tolist()):
            in_s = [t for t in inp if t in sentinels]
            tg_s = [t for t in tgt if t in sentinels]
            k = len(in_s)
            assert in_s == tok.sentinel_ids[:k] and tg_s == tok.sentinel_ids[: k + 1]
            assert tgt[-2:] == [tok.sentinel_ids[k], tok.eos_id] and inp[-1] == tok.eos_id
            # put the spans back: the original sequence comes out
            pieces, cur = {}, None
            for t in tgt[:-2]:
                if t in sentinels:
                    cur = t
                    pieces[cur] = []
                else:
                    pieces[cur].append(t)
            rebuilt = [x for t in inp[:-1] for x in (pieces[t] if t in sentinels else [t])]
            assert rebuilt == ex
            n_tokens += len(ex)
            n_noise += sum(len(v) for v in pieces.values())
            spans += [len(v) for v in pieces.values()]
    assert n_tokens >= 100_000
    assert abs(n_noise / n_tokens - 0.15) < 0.01
    assert abs(np.mean(spans) / 3.0 - 1) < 0.05


def test_noise_mask_starts_with_a_gap_and_varies():
    rng = np.random.default_rng(0)
    masks = [random_spans_noise_mask(100, 0.15, 3.0, rng) for _ in range(50)]
    assert all(not m[0] and m.sum() == 15 for m in masks)
    assert len({m.tobytes() for m in masks}) == 50


def test_too_long_examples_are_rejected(unigram):
    coll = T5SpanCorruptionCollator(
        unigram.sentinel_ids, unigram.eos_id, unigram.pad_id, T5Config(inputs_length=16)
    )
    with pytest.raises(ValueError, match="t5_raw_length"):
        coll([list(range(10, 10 + coll.raw_length + 1))])


def test_batched_partitions_are_uniform_over_compositions():
    from ptft_fast.data.t5 import _random_partitions

    parts = _random_partitions(6, 3, 60_000, np.random.default_rng(0))
    assert (parts >= 1).all() and (parts.sum(1) == 6).all()
    _, counts = np.unique(parts, axis=0, return_counts=True)
    assert len(counts) == 10  # C(5, 2) compositions of 6 into 3 positive parts
    assert counts.min() / counts.max() > 0.93  # each ~6,000 times


def test_batched_masks_rows_differ_and_keep_counts():
    masks = random_spans_noise_masks(64, 200, 0.15, 3.0, np.random.default_rng(1))
    starts = masks & ~np.concatenate([np.zeros((200, 1), bool), masks[:, :-1]], axis=1)
    assert (masks.sum(1) == 10).all() and (starts.sum(1) == 3).all() and not masks[:, 0].any()
    assert len({m.tobytes() for m in masks}) == 200
