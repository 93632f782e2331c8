"""Independent Python model of the CUDA kernels' dropout masks (csrc/philox.cuh), written from the
Philox-4x32-10 definition (Salmon et al., Random123) and the mapping documented there — not from
the C++ code. The CPU tests check it against the C++ (compiled for the host) and Random123's
known answers; the GPU tests regenerate the kernels' masks with it from the launch's {seed, offset}.

Mapping: one Philox call (counter = group index | offset << 64, key = seed) gives eight 16-bit
uniforms (word w's low half is slot 2w, its high half slot 2w + 1); an element is kept iff its
uniform >= round(p * 65536).
  * elementwise: flat element idx is slot idx % 8 of group idx // 8.
  * attention (b, h, i, j), row R = (b * Hq + h) * max_q + i: group
    R * 4 * ceil(max_k / 32) + (j // 32) * 4 + (j // 2) % 4, slot ((j // 8) % 4) * 2 + j % 2.
"""

from __future__ import annotations

import numpy as np

M32 = np.uint64(0xFFFFFFFF)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32_10(ctr, key) -> np.ndarray:
    """ctr: (..., 4) uint32 words, key: (k0, k1) ints. Returns (..., 4) uint32."""
    c = [np.asarray(ctr, dtype=np.uint64)[..., w] for w in range(4)]
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = _M0 * c[0], _M1 * c[2]  # exact: 32 x 32 bits fit 64
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & M32,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & M32,
        ]
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return np.stack(c, axis=-1).astype(np.uint32)


def threshold(p: float) -> int:
    """round(p * 65536) of the float32 p, ties to even (as the device)."""
    return round(float(np.float32(p)) * 65536)


def uniforms16(groups, seed: int, offset: int) -> np.ndarray:
    """(..., 8) 16-bit uniforms of Philox groups (any int shape)."""
    g = np.asarray(groups, dtype=np.uint64)
    ctr = np.stack(
        [
            g & M32,
            g >> np.uint64(32),
            np.full_like(g, offset & 0xFFFFFFFF),
            np.full_like(g, (offset >> 32) & 0xFFFFFFFF),
        ],
        axis=-1,
    )
    words = philox4x32_10(ctr, (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)).astype(np.uint32)
    halves = np.stack([words & 0xFFFF, words >> 16], axis=-1)  # (..., 4, 2): slot 2w + half
    return halves.reshape(*g.shape, 8)


def elementwise_keep(seed: int, offset: int, n: int, p: float) -> np.ndarray:
    """(n,) bool: which flat elements the csrc elementwise dropouts keep."""
    idx = np.arange(n, dtype=np.uint64)
    u = uniforms16(idx >> np.uint64(3), seed, offset)
    return np.take_along_axis(u, (idx & np.uint64(7)).astype(np.int64)[:, None], 1)[:, 0] >= threshold(p)


def attention_keep(
    seed: int, offset: int, batch: int, hq: int, max_q: int, max_k: int, p: float
) -> np.ndarray:
    """(batch, hq, max_q, max_k) bool: which attention probabilities the csrc kernels keep."""
    rows = np.arange(batch * hq * max_q, dtype=np.uint64).reshape(batch, hq, max_q, 1)
    j = np.arange(max_k, dtype=np.uint64)
    gpr = np.uint64(4 * ((max_k + 31) // 32))
    groups = rows * gpr + (j >> np.uint64(5)) * np.uint64(4) + ((j >> np.uint64(1)) & np.uint64(3))
    slot = (((j >> np.uint64(3)) & np.uint64(3)) * np.uint64(2) + (j & np.uint64(1))).astype(np.int64)
    u = uniforms16(groups, seed, offset)  # (batch, hq, max_q, max_k, 8)
    picked = np.take_along_axis(u, np.broadcast_to(slot, groups.shape)[..., None], -1)[..., 0]
    return picked >= threshold(p)
