"""@triton.jit helpers shared by the kernels: the fp32-exact matmul switch and the dropout mask.

Dropout mask, the same definition in every kernel that drops (attention probabilities, layer norm
and LoRA inputs): element (row, col) of a row-major (rows, row_len) tensor is kept when

    Philox4x32-10(key = seed, counter = (row · ⌈row_len / 4⌉ + col // 4, 0, 0, 0))[col % 4] >= ⌊p · 2³²⌋

(the counter's 64 bits are its first two words, low word first; the seed's low and high words are
the key). One Philox call gives the randoms of four neighbouring columns, so a (R, C) tile costs R·C/4
calls, and the integer threshold needs no conversion to float. Forward and backward regenerate the
mask from (seed, row, col) instead of storing it; tests regenerate it independently.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ptft_fast.kernels._common import require_package_name

require_package_name(__name__)


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32; exact fp32 products for fp32 inputs (no TF32)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def keep_mask(seed, rows, col0, row_len, p, BLOCK_C: tl.constexpr):
    """Dropout keep mask (len(rows), BLOCK_C) bool of columns col0 .. col0 + BLOCK_C - 1 (col0 and
    BLOCK_C multiples of 4) of the given rows, as defined in the module docstring."""
    groups = col0 // 4 + tl.arange(0, BLOCK_C // 4)
    counter = rows.to(tl.int64)[:, None] * ((row_len + 3) // 4) + groups[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed, counter)
    # join puts its pair on a new last axis: ((r0, r2), (r1, r3)) flattens to r0, r1, r2, r3
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (rows.shape[0], BLOCK_C))
    threshold = (tl.to_tensor(p).to(tl.float32) * 4294967296.0).to(tl.uint32)
    return r >= threshold


def dropout_block(n: int) -> int:
    """Smallest column tile ``keep_mask`` accepts for rows of n columns: a power of two >= 4."""
    return max(4, triton.next_power_of_2(max(1, int(n))))
