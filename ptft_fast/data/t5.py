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

from ptft_fast.data.collate import IGNORE_INDEX, as_id_list, pad_sequences, shift_right


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


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive ints summing to ``total``, uniformly over compositions."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else []
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)


def random_spans_noise_mask(
    n: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """(n,) bool noise mask: alternating gap/span segments, starting with a gap."""
    num_noise, num_spans = _noise_counts(n, noise_density, mean_noise_span_length)
    spans = _random_partition(num_noise, num_spans, rng)
    gaps = _random_partition(n - num_noise, num_spans, rng)
    lengths = np.stack([gaps, spans], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], num_spans), lengths)


def span_corrupt(
    tokens: Sequence[int], mask: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[list[int], list[int]]:
    """(inputs, targets) for one sequence and its noise mask (layout in the module docstring)."""
    inputs, targets = [], []
    k = -1
    prev = False
    for tok, noise in zip(tokens, mask):
        if noise:
            if not prev:
                k += 1
                if k + 1 >= len(sentinel_ids):
                    raise ValueError(
                        f"more spans than the {len(sentinel_ids)} sentinels allow (one is final)"
                    )
                inputs.append(sentinel_ids[k])
                targets.append(sentinel_ids[k])
            targets.append(tok)
        else:
            inputs.append(tok)
        prev = bool(noise)
    targets.append(sentinel_ids[k + 1])
    return [*inputs, eos_id], [*targets, eos_id]


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
        inputs, targets = [], []
        for ex in examples:
            toks = as_id_list(ex)
            if not 2 <= len(toks) <= self.raw_length:
                raise ValueError(
                    f"examples need 2..{self.raw_length} tokens (t5_raw_length), got {len(toks)}"
                )
            mask = random_spans_noise_mask(
                len(toks), self.cfg.noise_density, self.cfg.mean_noise_span_length, self.rng
            )
            i, t = span_corrupt(toks, mask, self.sentinel_ids, self.eos_id)
            inputs.append(i)
            targets.append(t)
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
