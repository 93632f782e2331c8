"""LayerNorm / RMSNorm with fused dropout + residual add, forward and backward (Triton).

One program normalizes BLOCK_M rows of BLOCK_N >= H columns at once: for small hidden sizes
(768, 1024) a single row per program leaves most lanes idle, so several rows share a program.
Dropout masks are ``_jit_common.keep_mask`` of (seed, row, column) — four columns per Philox call —
so backward regenerates the exact forward mask instead of storing it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, gpu_target, launch, require_package_name
from ptft_fast.kernels._jit_common import dropout_block, keep_mask

require_package_name(__name__)


@triton.jit
def _layer_norm_fwd_kernel(
    X, R, W, B, Y, HOUT, MEAN, RSTD,
    n_rows, n_cols, eps, p, seed,
    HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, DROPOUT: tl.constexpr,
    STORE_H: tl.constexpr, RMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    h = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        h = tl.where(keep_mask(seed, rows, 0, n_cols, p, BLOCK_N), h * (1.0 / (1.0 - p)), 0.0)
    if HAS_RES:
        h += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    if STORE_H:
        # Normalize exactly the residual stream we hand back (rounded to its dtype), as the
        # unfused composition does; backward re-reads it from HOUT.
        h = h.to(HOUT.dtype.element_ty)
        tl.store(HOUT + offs, h, mask=mask)
        h = h.to(tl.float32)
    if RMS:
        mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        hc = h
    else:
        mean = tl.sum(h, axis=1) / n_cols
        hc = tl.where(mask, h - mean[:, None], 0.0)
    var = tl.sum(hc * hc, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    y = hc * rstd[:, None]
    cmask = cols < n_cols
    if HAS_W:
        y = y * tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    rmask = rows < n_rows
    tl.store(MEAN + rows, mean, mask=rmask)
    tl.store(RSTD + rows, rstd, mask=rmask)


@triton.jit
def _layer_norm_bwd_kernel(
    DY, H, W, MEAN, RSTD, DHOUT, DX, DRES, DW_PART, DB_PART,
    n_rows, n_cols, p, seed,
    HAS_W: tl.constexpr, HAS_DHOUT: tl.constexpr, HAS_DRES: tl.constexpr, DROPOUT: tl.constexpr,
    RMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Persistent grid-stride loop: each program sums its dweight/dbias partials over many row
    # blocks in registers and writes one row of DW_PART/DB_PART (reduced by the launcher), which
    # keeps the reduction deterministic without atomics.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < n_cols
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32) if HAS_W else tl.where(cmask, 1.0, 0.0)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    n_blocks = tl.cdiv(n_rows, BLOCK_M)
    for blk in range(pid, n_blocks, nprog):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < n_rows
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        h = tl.load(H + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=rmask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w[None, :] * dy
        dw_acc += tl.sum(dy * xhat, axis=0)
        db_acc += tl.sum(dy, axis=0)
        c1 = tl.sum(xhat * wdy, axis=1) / n_cols
        if RMS:
            dh = (wdy - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(wdy, axis=1) / n_cols
            dh = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_DHOUT:  # the returned residual stream h also received a gradient
            dh += tl.load(DHOUT + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_DRES:
            tl.store(DRES + offs, dh.to(DRES.dtype.element_ty), mask=mask)
        if DROPOUT:
            dh = tl.where(keep_mask(seed, rows, 0, n_cols, p, BLOCK_N), dh * (1.0 / (1.0 - p)), 0.0)
        tl.store(DX + offs, dh.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PART + pid * n_cols + cols, dw_acc, mask=cmask)
    tl.store(DB_PART + pid * n_cols + cols, db_acc, mask=cmask)


def _blocks(n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): ~4K elements per program, at least one full row (>= 4
    columns: the dropout mask's granularity), <= 8 elements of a row tile per thread so the
    backward's row tiles and column accumulators stay in registers."""
    block_n = dropout_block(n_cols)
    block_m = max(1, min(16, 4096 // block_n))
    num_warps = min(max(block_m * block_n // 256, 1), 32)
    return block_m, block_n, num_warps


def layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None,
    rms: bool,
    dropout_p: float,
    seed: int,
    store_h: bool,
    h_dtype: torch.dtype,
):
    """Forward of norm(dropout(x) + residual).

    Args:
        x: (M, H) contiguous. residual: (M, H) contiguous or None. weight, bias: (H,) or None.
        seed: Philox seed for the dropout mask (ignored when dropout_p == 0).
        store_h: write the pre-norm sum h (M, H) in ``h_dtype``.

    Returns:
        y (M, H) like x, h (M, H) or None, mean (M,) fp32 (zeros for RMS), rstd (M,) fp32.
    """
    x, residual, weight, bias = contiguous(x, residual, weight, bias)
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    h = torch.empty((n_rows, n_cols), dtype=h_dtype, device=x.device) if store_h else None
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    block_m, block_n, num_warps = _blocks(n_cols)
    grid = (triton.cdiv(n_rows, block_m),)
    launch(_layer_norm_fwd_kernel, grid,
        x, residual, weight, bias, y, h, mean, rstd,
        n_rows, n_cols, eps, dropout_p, seed,
        HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
        DROPOUT=dropout_p > 0.0, STORE_H=store_h, RMS=rms,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=1,
    )  # fmt: skip
    return y, h, mean, rstd


def layer_norm_bwd(
    dy: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dh_out: torch.Tensor | None,
    rms: bool,
    dropout_p: float,
    seed: int,
    x_dtype: torch.dtype,
    residual_dtype: torch.dtype | None,
):
    """Backward of :func:`layer_norm_fwd`.

    Args:
        dy: (M, H) grad of y. h: (M, H) the normalized input (x itself without residual/dropout).
        mean, rstd: (M,) fp32 from the forward. dh_out: (M, H) grad of the returned h, or None.
        residual_dtype: dtype of the residual grad, None when there was no residual.

    Returns:
        dx (M, H), dresidual (M, H) or None, dweight (H,) fp32, dbias (H,) fp32.
    """
    dy, h, weight, dh_out = contiguous(dy, h, weight, dh_out)
    n_rows, n_cols = dy.shape
    dx = torch.empty((n_rows, n_cols), dtype=x_dtype, device=dy.device)
    dres = (
        None
        if residual_dtype is None
        else torch.empty((n_rows, n_cols), dtype=residual_dtype, device=dy.device)
    )
    block_m, block_n, num_warps = _blocks(n_cols)
    target = gpu_target(dy.device)
    nprog = max(1, min(triton.cdiv(n_rows, block_m), 4 * target.sm_count if target else 4))
    dw_part = torch.empty((nprog, n_cols), dtype=torch.float32, device=dy.device)
    db_part = torch.empty_like(dw_part)
    launch(_layer_norm_bwd_kernel, (nprog,),
        dy, h, weight, mean, rstd, dh_out, dx, dres, dw_part, db_part,
        n_rows, n_cols, dropout_p, seed,
        HAS_W=weight is not None, HAS_DHOUT=dh_out is not None, HAS_DRES=dres is not None,
        DROPOUT=dropout_p > 0.0, RMS=rms, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=2,
    )  # fmt: skip
    return dx, dres, dw_part.sum(0), db_part.sum(0)
