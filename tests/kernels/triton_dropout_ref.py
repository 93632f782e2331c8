"""The Triton kernels' dropout mask regenerated without Triton: Philox4x32-10 from the independent
numpy model in tests/csrc/philox_ref.py (written from the Random123 paper, checked there against
its known-answer vectors), mapped as the Triton kernels promise (kernels/_jit_common.py): element
(row, col) of a row-major (rows, row_len) tensor is kept when lane col % 4 of Philox(key = seed,
counter = (c, 0, 0, 0)), c = row · ⌈row_len / 4⌉ + col // 4 (64-bit, low word first), is
>= ⌊p · 2³²⌋.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "csrc"))
from philox_ref import philox4x32_10

_MASK32 = np.uint64(0xFFFFFFFF)


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
    out = philox4x32_10(counter, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
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
