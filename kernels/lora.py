"""LoRA linear, y = x Wᵀ + b + s·(dropout(x) Aᵀ) Bᵀ, forward and backward (Triton).

Forward is two launches: the thin down projection t = dropout(x) Aᵀ (M, r), dropout applied to
the x tile in-kernel (``_jit_common.keep_mask`` over x's (row, column), never stored), then one
matmul that starts its accumulator tile from the rank-r product t (s·B)ᵀ (+ bias) and adds x Wᵀ
on top, so the low-rank update costs no extra pass over y and no second accumulator. Backward
reuses the fused matmul for dx = dy W + keep ∘ (dt A) / (1 - p) (the mask regenerated from the
seed), and a dedicated kernel for dA = dtᵀ dropout(x), computed as its transpose dropout(x)ᵀ dt so
the wide dimension feeds the tensor cores' M, split over row ranges (partials summed after, no
atomics) so that even at in = 768 it launches more programs than an H100 has SMs. dt = s·dy B and
dB = s·dyᵀ t are rank-thin and use torch matmuls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, gpu_target, launch, next_pow2, require_package_name
from ptft_fast.kernels._jit_common import dot, keep_mask

require_package_name(__name__)


@triton.jit
def _dropped_x(X, offs_m, k0, n_rows, n_in, p, seed, DROPOUT: tl.constexpr, BLOCK_K: tl.constexpr):
    """x[offs_m, k0 : k0 + BLOCK_K] with dropout applied (keep / (1 - p)), zero outside bounds."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask = (offs_m[:, None] < n_rows) & (offs_k[None, :] < n_in)
    x = tl.load(X + offs_m[:, None].to(tl.int64) * n_in + offs_k[None, :], mask=mask, other=0.0)
    if DROPOUT:
        keep = keep_mask(seed, offs_m, k0, n_in, p, BLOCK_K)
        x = tl.where(keep, x * (1.0 / (1.0 - p)), 0.0).to(X.dtype.element_ty)
    return x


@triton.jit
def _lora_linear_down_kernel(
    X, A, T, n_rows, n_in, rank, p, seed,
    DROPOUT: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """T (M, r) = dropout(X) (M, in) @ A (r, in)ᵀ."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, n_in, BLOCK_K):
        x = _dropped_x(X, offs_m, k0, n_rows, n_in, p, seed, DROPOUT, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        amask = (offs_r[:, None] < rank) & (offs_k[None, :] < n_in)
        a = tl.load(A + offs_r[:, None] * n_in + offs_k[None, :], mask=amask, other=0.0)
        acc += dot(x, tl.trans(a.to(x.dtype)), IEEE)
    mask = (offs_m[:, None] < n_rows) & (offs_r[None, :] < rank)
    tl.store(T + offs_m[:, None] * rank + offs_r[None, :], acc.to(T.dtype.element_ty), mask=mask)


@triton.jit
def _lora_linear_fused_mm_kernel(
    X, W, swk, swn, T, L, slj, sln, BIAS, Y,
    n_rows, n_out, n_red, rank, lora_scale, p, seed,
    HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Y (M, N) = X (M, K) @ W' + keep ∘ (lora_scale · T (M, r) @ L') + bias, where W'[k, n] and
    L'[j, n] are read through strides (swk, swn), (slj, sln) so W, A, B are never transposed
    in memory. The keep mask (DROPOUT) is indexed like an (M, N) input x of width N."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n0 = tl.program_id(1) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mmask = offs_m < n_rows
    nmask = offs_n < n_out
    # the rank-r term first: it seeds the accumulator, so only one (BM, BN) fp32 tile is live
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j0 in range(0, rank, BLOCK_R):
        offs_j = j0 + tl.arange(0, BLOCK_R)
        jmask = offs_j < rank
        t = tl.load(
            T + offs_m[:, None] * rank + offs_j[None, :], mask=mmask[:, None] & jmask[None, :], other=0.0
        )
        lw = tl.load(
            L + offs_j[:, None] * slj + offs_n[None, :] * sln, mask=jmask[:, None] & nmask[None, :], other=0.0
        )
        acc += dot(t, lw.to(t.dtype), IEEE)
    acc = acc * lora_scale
    if DROPOUT:
        acc = tl.where(keep_mask(seed, offs_m, n0, n_out, p, BLOCK_N), acc * (1.0 / (1.0 - p)), 0.0)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    for k0 in range(0, n_red, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < n_red
        x = tl.load(
            X + offs_m[:, None].to(tl.int64) * n_red + offs_k[None, :],
            mask=mmask[:, None] & kmask[None, :],
            other=0.0,
        )
        w = tl.load(
            W + offs_k[:, None] * swk + offs_n[None, :] * swn, mask=kmask[:, None] & nmask[None, :], other=0.0
        )
        acc += dot(x, w.to(x.dtype), IEEE)
    out_ptr = Y + offs_m[:, None].to(tl.int64) * n_out + offs_n[None, :]
    tl.store(out_ptr, acc.to(Y.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _lora_linear_da_kernel(
    DT, X, DA_PART, n_rows, n_in, rank, rows_per_split, p, seed,
    DROPOUT: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """DA_PART[s] (r, in) = DT[rows of split s]ᵀ @ dropout(X)[rows of split s], for split
    s = program_id(1) of rows_per_split rows (a multiple of BLOCK_M); one program per column block
    and split, each output element written once (deterministic). Computed as the transpose
    dropout(X)ᵀ DT (BLOCK_N, BLOCK_R) so the column block is the MMA's M dimension."""
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    row_start = tl.program_id(1) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_rows)
    acc = tl.zeros([BLOCK_N, BLOCK_R], dtype=tl.float32)
    for m0 in range(row_start, row_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        x = _dropped_x(X, offs_m, n0, n_rows, n_in, p, seed, DROPOUT, BLOCK_N)
        dmask = (offs_m[:, None] < n_rows) & (offs_r[None, :] < rank)
        dt = tl.load(DT + offs_m[:, None] * rank + offs_r[None, :], mask=dmask, other=0.0)
        acc += dot(tl.trans(x), dt.to(x.dtype), IEEE)
    mask = (offs_r[None, :] < rank) & (offs_n[:, None] < n_in)
    part = DA_PART + tl.program_id(1).to(tl.int64) * rank * n_in
    tl.store(part + offs_r[None, :] * n_in + offs_n[:, None], acc, mask=mask)


def _blocks(x: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). fp32 inputs (exact products, no tensor
    cores) use 64-wide tiles so that the FMA-based dot keeps its operands in registers."""
    if gpu_target(x.device) is None:
        return 16, 32, 32, 4, 1
    if x.dtype == torch.float32:
        return 64, 64, 32, 4, 2
    return 128, 128, 64, 8, 3


def _rank_block(rank: int) -> int:
    return min(64, max(16, next_pow2(rank)))


def fused_mm(x, w_kn, t, l_jn, lora_scale, bias, out_dtype, p=0.0, seed=0):
    """x (M, K) @ w_kn (K, N) + keep ∘ (lora_scale · t (M, r) @ l_jn (r, N)) + bias (N,).

    w_kn and l_jn may be transposed views (only their strides are used); x, t contiguous.
    Returns (M, N) in ``out_dtype``.
    """
    x, t, bias = contiguous(x, t, bias)
    n_rows, n_red = x.shape
    n_out = w_kn.shape[1]
    y = torch.empty((n_rows, n_out), dtype=out_dtype, device=x.device)
    bm, bn, bk, warps, stages = _blocks(x)
    grid = (triton.cdiv(n_rows, bm), triton.cdiv(n_out, bn))
    launch(_lora_linear_fused_mm_kernel, grid,
        x, w_kn, *w_kn.stride(), t, l_jn, *l_jn.stride(), bias, y,
        n_rows, n_out, n_red, t.shape[1], lora_scale, p, seed,
        HAS_BIAS=bias is not None, DROPOUT=p > 0.0, IEEE=x.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=_rank_block(t.shape[1]), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def lora_linear_fwd(x, weight, bias, lora_a, lora_b, scaling, p, seed):
    """Forward launcher.

    Args:
        x: (M, in) contiguous. weight: (out, in). bias: (out,) or None. lora_a: (r, in),
        lora_b: (out, r). scaling: s. p, seed: dropout probability and Philox seed.

    Returns:
        y (M, out) like x, and t = dropout(x) Aᵀ (M, r) for backward.
    """
    x, lora_a = contiguous(x, lora_a)
    n_rows, n_in = x.shape
    rank = lora_a.shape[0]
    t = torch.empty((n_rows, rank), dtype=x.dtype, device=x.device)
    bm, _, bk, warps, stages = _blocks(x)
    launch(_lora_linear_down_kernel, (triton.cdiv(n_rows, bm),),
        x, lora_a, t, n_rows, n_in, rank, p, seed,
        DROPOUT=p > 0.0, IEEE=x.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_K=bk, BLOCK_R=max(16, next_pow2(rank)), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    y = fused_mm(x, weight.t(), t, lora_b.t(), scaling, bias, x.dtype)
    return y, t


def da_splits(n_rows: int, col_blocks: int, block_m: int, device: torch.device) -> int:
    """Row splits of the dA reduction: enough that col_blocks × splits programs cover every SM
    (two under the interpreter, so tests exercise the sum of partials), never an empty split."""
    target = gpu_target(device)
    wanted = 2 if target is None else triton.cdiv(target.sm_count, col_blocks)
    return max(1, min(wanted, triton.cdiv(n_rows, block_m)))


def lora_linear_bwd(dy, x, t, weight, lora_a, lora_b, scaling, p, seed):
    """Backward launcher: dy (M, out), x (M, in), t (M, r) from the forward.

    Returns:
        dx (M, in) like x, dA (r, in) and dB (out, r) in lora_a's dtype.
    """
    dy, x, t = contiguous(dy, x, t)
    n_rows, n_in = x.shape
    rank = lora_a.shape[0]
    dt = (dy @ lora_b.to(dy.dtype)).mul_(scaling).contiguous()  # (M, r)
    dlb = (dy.t() @ t.to(dy.dtype)).mul_(scaling).to(lora_b.dtype)  # (out, r)
    dx = fused_mm(dy, weight, dt, lora_a, 1.0, None, x.dtype, p, seed)
    bm, bn, _, warps, stages = _blocks(x)
    col_blocks = triton.cdiv(n_in, bn)
    splits = da_splits(n_rows, col_blocks, bm, x.device)
    rows_per_split = triton.cdiv(triton.cdiv(n_rows, splits), bm) * bm
    splits = triton.cdiv(n_rows, rows_per_split)
    part = torch.empty((splits, rank, n_in), dtype=torch.float32, device=x.device)
    launch(_lora_linear_da_kernel, (col_blocks, splits),
        dt, x, part, n_rows, n_in, rank, rows_per_split, p, seed,
        DROPOUT=p > 0.0, IEEE=x.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=max(16, next_pow2(rank)), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    dla = part.sum(0).to(lora_a.dtype)
    return dx, dla, dlb
