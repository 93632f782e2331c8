"""Masked-token linear cross-entropy (Triton): loss of ``hidden @ weight.T + bias`` for labeled
rows only, without the (N, V) logits and without a host sync.

Row selection stays on the device: a prefix sum over ``labels != ignore_index`` packs the labeled
row indices to the front of ROWS and their count into COUNT; the grid covers all N rows and
programs past COUNT return at once, so the launch never needs the count on the host. A program
owns BLOCK_M labeled rows and one of N_SPLIT contiguous vocab ranges (the split keeps the GPU
busy when few rows are labeled) and walks it in BLOCK_V blocks, computing each logits block with
tl.dot over BLOCK_H slices of the hidden dim: the matmul is inside the kernel, fused with the
online log-sum-exp. The per-split (max, sum, label logit, logit sum) partials are merged per row
by a few elementwise torch ops. Backward recomputes each logits block once, turns it into
dlogits and accumulates dh, dW and db with fp32 atomics (dh is shared by the vocab splits, dW/db
by the row blocks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, gpu_target, launch, require_package_name

require_package_name(__name__)


@triton.jit
def _logits_block(HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS: tl.constexpr,
                  IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    """(BLOCK_M, BLOCK_V) fp32 logits of rows ``idx`` against vocab rows ``offs_v``."""
    z = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    for h0 in range(0, n_hidden, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        hmask = offs_h < n_hidden
        x = tl.load(
            HID + idx[:, None] * n_hidden + offs_h[None, :], mask=rmask[:, None] & hmask[None, :], other=0.0
        )
        w = tl.load(
            W + offs_v.to(tl.int64)[:, None] * n_hidden + offs_h[None, :],
            mask=vmask[:, None] & hmask[None, :],
            other=0.0,
        )
        if IEEE:
            z += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            z += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        z += tl.load(BIAS + offs_v, mask=vmask, other=0.0).to(tl.float32)[None, :]
    return z


@triton.jit
def _lce_fwd_kernel(
    HID, W, BIAS, LABELS, ROWS, COUNT, M_PART, L_PART, ZL_PART, ZS_PART,
    n_rows, n_hidden, n_vocab, split_len,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Partials of vocab split program_id(1) for BLOCK_M labeled rows, stored at [split, row]."""
    start = tl.program_id(0) * BLOCK_M
    n_valid = tl.load(COUNT)
    if start >= n_valid:  # only labeled rows are computed
        return
    split = tl.program_id(1)
    slot = start + tl.arange(0, BLOCK_M)
    rmask = slot < n_valid
    idx = tl.load(ROWS + slot, mask=rmask, other=0).to(tl.int64)
    label = tl.load(LABELS + idx, mask=rmask, other=0).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_label = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    v_end = tl.minimum(n_vocab, (split + 1) * split_len)
    for v0 in range(split * split_len, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < v_end
        z = _logits_block(
            HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_H
        )
        z_label += tl.sum(tl.where(offs_v[None, :] == label[:, None], z, 0.0), axis=1)
        z_sum += tl.sum(tl.where(vmask[None, :], z, 0.0), axis=1)
        z = tl.where(vmask[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m_i = m_new
    part = split * n_rows + idx
    tl.store(M_PART + part, m_i, mask=rmask)
    tl.store(L_PART + part, l_i, mask=rmask)
    tl.store(ZL_PART + part, z_label, mask=rmask)
    tl.store(ZS_PART + part, z_sum, mask=rmask)


@triton.jit
def _lce_bwd_kernel(
    HID, W, BIAS, LABELS, ROWS, COUNT, LSE, GRAD, DH, DW, DB,
    n_hidden, n_vocab, split_len, smoothing, z_loss,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    start = tl.program_id(0) * BLOCK_M
    n_valid = tl.load(COUNT)
    if start >= n_valid:
        return
    split = tl.program_id(1)
    slot = start + tl.arange(0, BLOCK_M)
    rmask = slot < n_valid
    idx = tl.load(ROWS + slot, mask=rmask, other=0).to(tl.int64)
    label = tl.load(LABELS + idx, mask=rmask, other=0).to(tl.int32)
    lse = tl.load(LSE + idx, mask=rmask, other=0.0)
    g = tl.load(GRAD + idx, mask=rmask, other=0.0)  # d(total)/d(row loss)
    coef = g * (1.0 + 2.0 * z_loss * lse)
    v_end = tl.minimum(n_vocab, (split + 1) * split_len)
    for v0 in range(split * split_len, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < v_end
        z = _logits_block(
            HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_H
        )
        # dloss/dz = softmax·(1 + 2 z_loss lse) - smoothing/V - (1 - smoothing)·onehot(label)
        d = tl.exp(z - lse[:, None]) * coef[:, None] - (g * smoothing / n_vocab)[:, None]
        d -= tl.where(offs_v[None, :] == label[:, None], ((1.0 - smoothing) * g)[:, None], 0.0)
        d = tl.where(rmask[:, None] & vmask[None, :], d, 0.0)
        if HAS_BIAS:
            tl.atomic_add(DB + offs_v, tl.sum(d, axis=0), mask=vmask)
        d_in = d.to(W.dtype.element_ty)
        for h0 in range(0, n_hidden, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            hmask = offs_h < n_hidden
            xm = rmask[:, None] & hmask[None, :]
            wm = vmask[:, None] & hmask[None, :]
            x = tl.load(HID + idx[:, None] * n_hidden + offs_h[None, :], mask=xm, other=0.0)
            w = tl.load(W + offs_v.to(tl.int64)[:, None] * n_hidden + offs_h[None, :], mask=wm, other=0.0)
            if IEEE:
                dh_part = tl.dot(d_in, w, input_precision="ieee")
                dw_part = tl.dot(tl.trans(d_in), x, input_precision="ieee")
            else:
                dh_part = tl.dot(d_in, w)
                dw_part = tl.dot(tl.trans(d_in), x)
            tl.atomic_add(DH + idx[:, None] * n_hidden + offs_h[None, :], dh_part, mask=xm)
            tl.atomic_add(DW + offs_v.to(tl.int64)[:, None] * n_hidden + offs_h[None, :], dw_part, mask=wm)


def _blocks(device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_V, BLOCK_H, num_warps)."""
    if gpu_target(device) is None:
        return 16, 32, 32, 4
    return 64, 128, 64, 8


def _vocab_split(
    n_rows: int, n_vocab: int, block_m: int, block_v: int, device: torch.device
) -> tuple[int, int]:
    """(number of vocab splits, split length): enough programs to fill the GPU even when only
    ~1/8 of the row blocks are labeled (the count is not known on the host)."""
    v_blocks = triton.cdiv(n_vocab, block_v)
    target = gpu_target(device)
    if target is None:
        n_split = min(v_blocks, 2)  # exercise the split merge in CPU tests
    else:
        sms = target.sm_count
        n_split = max(1, min(v_blocks, 16, triton.cdiv(8 * 2 * sms, triton.cdiv(n_rows, block_m))))
    split_len = triton.cdiv(v_blocks, n_split) * block_v
    return triton.cdiv(n_vocab, split_len), split_len


def pack_labeled_rows(labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labeled row indices first, on the device: (rows (N + 1,) int32, count (1,) int32).

    labels: (N,). rows[:count] are the labeled rows in order; the rest is don't-care.
    """
    valid = labels != ignore_index
    pos = torch.cumsum(valid.to(torch.int32), 0)
    n = labels.numel()
    # unlabeled rows all land in the spare slot n, which no program reads
    dest = torch.where(valid, pos - 1, torch.full_like(pos, n)).long()
    rows = torch.zeros(n + 1, dtype=torch.int32, device=labels.device)
    rows.scatter_(0, dest, torch.arange(n, dtype=torch.int32, device=labels.device))
    return rows, pos[-1:]


def linear_cross_entropy_fwd(hidden, weight, bias, labels, rows, count, smoothing, z_loss):
    """Per-row loss and log-sum-exp.

    Args:
        hidden: (N, H). weight: (V, H). bias: (V,) or None. labels: (N,).
        rows, count: from :func:`pack_labeled_rows`.

    Returns:
        loss (N,) fp32 (0 at ignored rows), lse (N,) fp32 (undefined at ignored rows).
    """
    hidden, weight, bias, labels = contiguous(hidden, weight, bias, labels)
    n_rows, n_hidden = hidden.shape
    n_vocab = weight.shape[0]
    bm, bv, bh, warps = _blocks(hidden.device)
    n_split, split_len = _vocab_split(n_rows, n_vocab, bm, bv, hidden.device)
    # partials of ignored rows stay at the neutral (-inf, 0, 0, 0)
    m_part = torch.full((n_split, n_rows), float("-inf"), dtype=torch.float32, device=hidden.device)
    l_part, zl_part, zs_part = (torch.zeros_like(m_part) for _ in range(3))
    launch(_lce_fwd_kernel, (triton.cdiv(n_rows, bm), n_split),
        hidden, weight, bias, labels, rows, count, m_part, l_part, zl_part, zs_part,
        n_rows, n_hidden, n_vocab, split_len,
        HAS_BIAS=bias is not None, IEEE=hidden.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_V=bv, BLOCK_H=bh, num_warps=warps,
    )  # fmt: skip
    # merge the splits' online log-sum-exp states
    m = m_part.amax(0)
    labeled = torch.isfinite(m)
    m = torch.where(labeled, m, 0.0)
    total = (l_part * torch.exp(m_part - m)).sum(0)
    lse = m + torch.log(torch.where(labeled, total, 1.0))
    z_label, z_sum = zl_part.sum(0), zs_part.sum(0)
    loss = (1.0 - smoothing) * (lse - z_label) + smoothing * (lse - z_sum / n_vocab) + z_loss * lse * lse
    return torch.where(labeled, loss, 0.0), lse


def linear_cross_entropy_bwd(hidden, weight, bias, labels, rows, count, lse, grad_rows, smoothing, z_loss):
    """Gradients of sum(grad_rows · loss).

    Args: as :func:`linear_cross_entropy_fwd`, plus lse (N,) from it and grad_rows (N,) fp32.

    Returns:
        dh (N, H) fp32 (0 at ignored rows), dW (V, H) fp32, db (V,) fp32 or None.
    """
    hidden, weight, bias, labels, grad_rows = contiguous(hidden, weight, bias, labels, grad_rows)
    n_rows, n_hidden = hidden.shape
    dh = torch.zeros((n_rows, n_hidden), dtype=torch.float32, device=hidden.device)
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device)
    db = torch.zeros(weight.shape[0], dtype=torch.float32, device=hidden.device) if bias is not None else None
    bm, bv, bh, warps = _blocks(hidden.device)
    n_split, split_len = _vocab_split(n_rows, weight.shape[0], bm, bv, hidden.device)
    launch(_lce_bwd_kernel, (triton.cdiv(n_rows, bm), n_split),
        hidden, weight, bias, labels, rows, count, lse, grad_rows, dh, dw, db,
        n_hidden, weight.shape[0], split_len, smoothing, z_loss,
        HAS_BIAS=bias is not None, IEEE=hidden.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_V=bv, BLOCK_H=bh, num_warps=warps,
    )  # fmt: skip
    return dh, dw, db
