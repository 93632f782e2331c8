"""T5 span corruption.

A raw sequence of ``n`` tokens gets ``round(n · noise_density)`` noise tokens in
``round(num_noise / mean_noise_span_length)`` spans; span and gap lengths are random partitions,
and the sequence starts with a non-noise gap (as T5 does). With spans k = 0..S-1::

    inputs  = gap_0 <extra_id_0> gap_1 <extra_id_1> … gap_{S-1} <extra_id_{S-1}> </s>
    targets = <extra_id_0> span_0 <extra_id_1> span_1 … <extra_id_{S-1}> span_{S-1} <extra_id_S> </s>

(the paper's layout: the target ends with a final sentinel). :func:`t5_raw_length` finds the
largest ``n`` whose inputs fit ``inputs_length``, and the matching target length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ptft_fast.data.collate import IGNORE_INDEX, pad_sequences, shift_right


def _noise_counts(n: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a raw length ``n`` (at least 1 of each, ≥ 1 gap token per span)."""
    num_noise = min(max(round(n * noise_density), 1), n - 1)
    num_spans = max(round(num_noise / mean_span), 1)
    return num_noise, min(num_spans, n - num_noise)


def t5_lengths(n: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(inputs length, targets length) after corrupting ``n`` raw tokens, both with </s>."""
    num_noise, num_spans = _noise_counts(n, noise_density, mean_noise_span_length)
    inputs = (n - num_noise) + num_spans + 1
    targets = num_noise + (num_spans + 1) + 1  # spans, sentinels incl. the final one, </s>
    return inputs, targets


def t5_raw_length(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """Largest raw length whose corrupted inputs fit ``inputs_length``, and its targets length.

    Feed raw sequences of exactly this length to get full ``inputs_length`` encoder inputs.
    """
    if inputs_length < 3:
        raise ValueError(f"inputs_length must be >= 3, got {inputs_length}")
    n = 2
    while t5_lengths(n + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        n += 1
    return n, t5_lengths(n, noise_density, mean_noise_span_length)[1]


def _random_partitions(total: int, parts: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, parts) positive ints, each row summing to ``total``, uniformly over compositions
    (the cut points are a uniform random subset of 1..total-1)."""
    if parts == 1:
        return np.full((rows, 1), total, dtype=np.int64)
    keys = rng.random((rows, total - 1))
    cuts = np.sort(np.argpartition(keys, parts - 2, axis=1)[:, : parts - 1] + 1, axis=1)
    edges = np.concatenate([np.zeros((rows, 1), np.int64), cuts, np.full((rows, 1), total)], axis=1)
    return np.diff(edges, axis=1).astype(np.int64)


def random_spans_noise_masks(
    n: int, rows: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """(rows, n) bool noise masks: alternating gap/span segments, starting with a gap; every row
    has the same numbers of noise tokens and spans (:func:`_noise_counts`)."""
    num_noise, num_spans = _noise_counts(n, noise_density, mean_noise_span_length)
    spans = _random_partitions(num_noise, num_spans, rows, rng)
    gaps = _random_partitions(n - num_noise, num_spans, rows, rng)
    bounds = np.cumsum(np.stack([gaps, spans], axis=2).reshape(rows, -1), axis=1)
    delta = np.zeros((rows, n + 1), dtype=np.int64)
    r = np.arange(rows)[:, None]
    np.add.at(delta, (r, bounds[:, 0::2]), 1)  # a span starts where its gap ends
    np.add.at(delta, (r, bounds[:, 1::2]), -1)
    return np.cumsum(delta, axis=1)[:, :n] > 0


def random_spans_noise_mask(
    n: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """(n,) bool noise mask: one row of :func:`random_spans_noise_masks`."""
    return random_spans_noise_masks(n, 1, noise_density, mean_noise_span_length, rng)[0]


def span_corrupt_rows(
    tokens: np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (B, L_i), targets (B, L_t)) int64 for rows tokens (B, n) and noise masks (B, n)
    (layout in the module docstring). Every row must have the same numbers of noise tokens and
    spans, as masks of :func:`random_spans_noise_masks` do."""
    tokens, mask = np.asarray(tokens, dtype=np.int64), np.asarray(mask, dtype=bool)
    b = len(tokens)
    start = mask.copy()
    start[:, 1:] &= ~mask[:, :-1]  # first token of each noise span
    counts = np.stack([start.sum(1), mask.sum(1)])
    if b and (counts != counts[:, :1]).any():
        raise ValueError("span_corrupt_rows: rows need the same numbers of noise tokens and spans")
    num_spans = int(counts[0, 0]) if b else 0
    if num_spans >= len(sentinel_ids):
        raise ValueError(f"more spans than the {len(sentinel_ids)} sentinels allow (one is final)")
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    at_start = sentinels[np.cumsum(start, axis=1) - 1]  # the sentinel of each position's span
    inputs = np.where(start, at_start, tokens)[~mask | start].reshape(b, -1)  # a span → its sentinel
    # targets: before each noise token its span's sentinel when it starts the span
    slots, keep = np.stack([at_start, tokens], axis=2), np.stack([start, mask], axis=2)
    targets = slots[keep].reshape(b, -1)
    eos = np.full((b, 1), eos_id, dtype=np.int64)
    final = np.full((b, 1), sentinels[num_spans], dtype=np.int64)
    return np.concatenate([inputs, eos], axis=1), np.concatenate([targets, final, eos], axis=1)


def span_corrupt(
    tokens: Sequence[int] | np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int64 arrays for one sequence and its noise mask."""
    inputs, targets = span_corrupt_rows(
        np.asarray(tokens, dtype=np.int64)[None], np.asarray(mask, dtype=bool)[None], sentinel_ids, eos_id
    )
    return inputs[0], targets[0]


@dataclass
class T5Config:
    inputs_length: int = 512  # encoder length (raw examples should have t5_raw_length(...)[0] tokens)
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    seed: int = 0


class T5SpanCorruptionCollator:
    """Raw token sequences → input_ids / attention_mask (B, inputs_length), labels (B, L_t) -100
    padded, decoder_input_ids / decoder_attention_mask (B, L_t) (shifted right from ``pad_id``,
    T5's decoder start), L_t = ``t5_raw_length(inputs_length)[1]``."""

    def __init__(self, sentinel_ids: Sequence[int], eos_id: int, pad_id: int, cfg: T5Config | None = None):
        self.cfg = cfg or T5Config()
        self.sentinel_ids, self.eos_id, self.pad_id = list(sentinel_ids), eos_id, pad_id
        self.raw_length, self.targets_length = t5_raw_length(
            self.cfg.inputs_length, self.cfg.noise_density, self.cfg.mean_noise_span_length
        )
        self.rng = np.random.default_rng(self.cfg.seed)

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        toks = [np.asarray(ex, dtype=np.int64) for ex in examples]
        lengths = np.array([len(t) for t in toks], dtype=np.int64)
        bad = (lengths < 2) | (lengths > self.raw_length)
        if bad.any():
            raise ValueError(
                f"examples need 2..{self.raw_length} tokens (t5_raw_length), got {int(lengths[bad][0])}"
            )
        inputs, targets = [None] * len(toks), [None] * len(toks)
        for n in np.unique(lengths):  # rows of one length are corrupted together (packed rows: all)
            idx = np.flatnonzero(lengths == n)
            c = self.cfg
            mask = random_spans_noise_masks(
                int(n), len(idx), c.noise_density, c.mean_noise_span_length, self.rng
            )
            ins, tgs = span_corrupt_rows(
                np.stack([toks[i] for i in idx]), mask, self.sentinel_ids, self.eos_id
            )
            for j, i in enumerate(idx):
                inputs[i], targets[i] = ins[j], tgs[j]
        input_ids = pad_sequences(inputs, self.pad_id, self.cfg.inputs_length)
        labels = pad_sequences(targets, IGNORE_INDEX, self.targets_length)
        return {
            "input_ids": input_ids,
            "attention_mask": (
                torch.arange(input_ids.shape[1])[None] < torch.tensor([len(i) for i in inputs])[:, None]
            ).long(),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.pad_id, self.pad_id),
            "decoder_attention_mask": (labels != IGNORE_INDEX).long(),
        }
