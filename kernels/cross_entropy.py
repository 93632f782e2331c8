"""Masked-token linear cross-entropy (Triton): loss of ``hidden @ weight.T + bias`` for labeled
rows only, without the (N, V) logits and without a host sync.

Row selection stays on the device: a prefix sum over ``labels != ignore_index`` packs the labeled
row indices to the front of ROWS and their count into COUNT; the grid covers all N rows and
programs past COUNT return at once, so the launch never needs the count on the host. Each
program owns BLOCK_M labeled rows and walks the vocab in BLOCK_V blocks, computing the logits
block with tl.dot over BLOCK_H slices of the hidden dim (the matmul is inside the kernel, fused
with the online log-sum-exp). Backward recomputes each logits block once and turns it into
dlogits, then dh (rows owned: plain stores) and dW/db (shared across programs: fp32 atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import INTERPRET, contiguous


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
            W + offs_v[:, None] * n_hidden + offs_h[None, :], mask=vmask[:, None] & hmask[None, :], other=0.0
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
    HID, W, BIAS, LABELS, ROWS, COUNT, LOSS, LSE,
    n_hidden, n_vocab, smoothing, z_loss,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    start = tl.program_id(0) * BLOCK_M
    n_valid = tl.load(COUNT)
    if start >= n_valid:  # only labeled rows are computed
        return
    slot = start + tl.arange(0, BLOCK_M)
    rmask = slot < n_valid
    idx = tl.load(ROWS + slot, mask=rmask, other=0).to(tl.int64)
    label = tl.load(LABELS + idx, mask=rmask, other=0).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_label = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for v0 in range(0, n_vocab, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < n_vocab
        z = _logits_block(
            HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_H
        )
        z_label += tl.sum(tl.where(offs_v[None, :] == label[:, None], z, 0.0), axis=1)
        z_sum += tl.sum(tl.where(vmask[None, :], z, 0.0), axis=1)
        z = tl.where(vmask[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m_i = m_new
    lse = m_i + tl.log(l_i)
    loss = (1.0 - smoothing) * (lse - z_label) + smoothing * (lse - z_sum / n_vocab) + z_loss * lse * lse
    tl.store(LOSS + idx, loss, mask=rmask)
    tl.store(LSE + idx, lse, mask=rmask)


@triton.jit
def _lce_bwd_kernel(
    HID, W, BIAS, LABELS, ROWS, COUNT, LSE, GRAD, DH, DW, DB,
    n_hidden, n_vocab, smoothing, z_loss,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    start = tl.program_id(0) * BLOCK_M
    n_valid = tl.load(COUNT)
    if start >= n_valid:
        return
    slot = start + tl.arange(0, BLOCK_M)
    rmask = slot < n_valid
    idx = tl.load(ROWS + slot, mask=rmask, other=0).to(tl.int64)
    label = tl.load(LABELS + idx, mask=rmask, other=0).to(tl.int32)
    lse = tl.load(LSE + idx, mask=rmask, other=0.0)
    g = tl.load(GRAD + idx, mask=rmask, other=0.0)  # d(total)/d(row loss)
    coef = g * (1.0 + 2.0 * z_loss * lse)
    for v0 in range(0, n_vocab, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < n_vocab
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
            w = tl.load(W + offs_v[:, None] * n_hidden + offs_h[None, :], mask=wm, other=0.0)
            dh_ptr = DH + idx[:, None] * n_hidden + offs_h[None, :]
            if IEEE:
                dh_part = tl.dot(d_in, w, input_precision="ieee")
                dw_part = tl.dot(tl.trans(d_in), x, input_precision="ieee")
            else:
                dh_part = tl.dot(d_in, w)
                dw_part = tl.dot(tl.trans(d_in), x)
            # this program owns its rows of DH: read-modify-write without atomics
            tl.store(dh_ptr, tl.load(dh_ptr, mask=xm, other=0.0) + dh_part, mask=xm)
            tl.atomic_add(DW + offs_v[:, None] * n_hidden + offs_h[None, :], dw_part, mask=wm)


def _blocks(device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_V, BLOCK_H, num_warps)."""
    if INTERPRET or device.type != "cuda":
        return 16, 32, 32, 4
    return 64, 128, 64, 8


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
        hidden: (N, H) contiguous. weight: (V, H) contiguous. bias: (V,) or None. labels: (N,).
        rows, count: from :func:`pack_labeled_rows`.

    Returns:
        loss (N,) fp32 (0 at ignored rows), lse (N,) fp32 (undefined at ignored rows).
    """
    hidden, weight, bias, labels = contiguous(hidden, weight, bias, labels)
    n_rows, n_hidden = hidden.shape
    loss = torch.zeros(n_rows, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(loss)
    bm, bv, bh, warps = _blocks(hidden.device)
    _lce_fwd_kernel[(triton.cdiv(n_rows, bm),)](
        hidden, weight, bias, labels, rows, count, loss, lse,
        n_hidden, weight.shape[0], smoothing, z_loss,
        HAS_BIAS=bias is not None, IEEE=hidden.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_V=bv, BLOCK_H=bh, num_warps=warps,
    )  # fmt: skip
    return loss, lse


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
    _lce_bwd_kernel[(triton.cdiv(n_rows, bm),)](
        hidden, weight, bias, labels, rows, count, lse, grad_rows, dh, dw, db,
        n_hidden, weight.shape[0], smoothing, z_loss,
        HAS_BIAS=bias is not None, IEEE=hidden.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_V=bv, BLOCK_H=bh, num_warps=warps,
    )  # fmt: skip
    return dh, dw, db
