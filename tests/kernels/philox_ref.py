"""Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) in numpy,
written from the paper's definition and checked against its known-answer vectors — independent of
Triton, so the kernels' dropout masks can be regenerated without reading them back from a kernel.

The mask definition the kernels promise (kernels/_jit_common.py): element (row, col) of a row-major
(rows, row_len) tensor is kept when lane col % 4 of Philox(key = seed, counter = (c, 0, 0, 0)),
c = row · ⌈row_len / 4⌉ + col // 4 (64-bit, low word first), is >= ⌊p · 2³²⌋.
"""

from __future__ import annotations

import numpy as np
import torch

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """counter: (..., 4) uint32; key: two uint32 words. Returns (..., 4) uint32."""
    c = [counter[..., i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for _ in range(rounds):
            p0, p1 = _M0 * c[0], _M1 * c[2]  # 32 x 32 -> 64-bit products
            hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
            hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
            c = [
                hi1 ^ c[1] ^ np.uint64(k0),
                lo1,
                hi0 ^ c[3] ^ np.uint64(k1),
                lo0,
            ]
            k0, k1 = np.uint32(k0 + _W0), np.uint32(k1 + _W1)
    return np.stack([x.astype(np.uint32) for x in c], axis=-1)


def threshold(p: float) -> int:
    """⌊p · 2³²⌋ for p as the kernels receive it (an fp32 scalar)."""
    return int(np.floor(float(np.float32(p)) * 2.0**32))


def keep_mask(seed: int, n_rows: int, row_len: int, p: float, row_offset: int = 0) -> torch.Tensor:
    """(n_rows, row_len) bool keep mask of rows row_offset .. row_offset + n_rows - 1."""
    groups = -(-row_len // 4)
    rows = np.arange(row_offset, row_offset + n_rows, dtype=np.uint64)[:, None]
    cols = np.arange(row_len, dtype=np.uint64)[None, :]
    c = rows * np.uint64(groups) + cols // np.uint64(4)
    counter = np.zeros((*c.shape, 4), dtype=np.uint32)
    counter[..., 0] = (c & _MASK32).astype(np.uint32)
    counter[..., 1] = (c >> np.uint64(32)).astype(np.uint32)
    seed = int(seed)
    out = philox4x32(counter, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
    lane = np.take_along_axis(out, (cols % np.uint64(4)).astype(np.int64)[..., None].repeat(n_rows, 0), -1)
    return torch.from_numpy(lane[..., 0] >= np.uint32(threshold(p)))


def assert_binomial(keep: torch.Tensor, p: float, sigmas: float = 5.0) -> None:
    """The kept count of keep.numel() Bernoulli(1 - p) draws within ``sigmas`` standard deviations."""
    n = keep.numel()
    kept = int(keep.sum())
    mean, std = n * (1 - p), (n * p * (1 - p)) ** 0.5
    assert abs(kept - mean) <= sigmas * std + 1, (
        f"kept {kept} of {n} at p={p}: expected {mean:.0f} ± {std:.1f}"
    )
