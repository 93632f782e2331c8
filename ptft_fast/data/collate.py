"""Small helpers shared by the collators: padding ragged id lists into tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100  # label value every loss in ptft_fast skips


def as_id_list(x) -> list[int]:
    """A token sequence (list, numpy array, 1-D tensor) as a list of Python ints."""
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, np.ndarray):
        return x.astype(np.int64).tolist()
    return [int(v) for v in x]


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_value: int, length: int | None = None, multiple_of: int | None = None
) -> torch.Tensor:
    """Right-pad id lists to one (B, T) int64 tensor.

    length: pad (never truncate) to exactly this; default the longest. multiple_of: round T up.
    """
    longest = max((len(s) for s in seqs), default=0)
    t = longest if length is None else length
    if length is not None and longest > length:
        raise ValueError(f"a sequence of length {longest} is longer than the requested length {length}")
    if multiple_of:
        t = -(-t // multiple_of) * multiple_of
    out = np.full((len(seqs), t), pad_value, dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = np.asarray(s, dtype=np.int64)
    return torch.from_numpy(out)


def pad_rows(body: np.ndarray, lengths: np.ndarray, pad_value: int, length: int | None = None) -> np.ndarray:
    """The array form of :func:`pad_sequences`: row b's tokens are ``body[b, :lengths[b]]``
    (body (B, L)); returns (B, T) int64 with ``pad_value`` after each row's length, T = ``length``
    or the longest row."""
    lengths = np.asarray(lengths, dtype=np.int64)
    longest = int(lengths.max(initial=0))
    t = longest if length is None else length
    if longest > t:
        raise ValueError(f"a sequence of length {longest} is longer than the requested length {t}")
    out = np.full((len(body), t), pad_value, dtype=np.int64)
    width = min(body.shape[1], t)
    keep = np.arange(width)[None, :] < lengths[:, None]
    out[:, :width] = np.where(keep, body[:, :width], pad_value)
    return out


def attention_mask_from_lengths(lengths: Sequence[int], t: int) -> torch.Tensor:
    """(B, T) int64: 1 on the first ``lengths[b]`` positions, 0 on padding."""
    return (torch.arange(t)[None, :] < torch.as_tensor(list(lengths))[:, None]).long()


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: (B, T) → [start, labels[:, :-1]] with -100 → pad."""
    out = torch.full_like(labels, pad_id)
    out[:, 0] = start_id
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == IGNORE_INDEX, pad_id)
