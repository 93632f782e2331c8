"""Masked-token linear cross-entropy (Triton): loss of ``hidden @ weight.T + bias`` for labeled rows
only, without the (N, V) logits, without a host sync and without atomics.

Row selection stays on the device: a prefix sum over ``labels != ignore_index`` packs the labeled
row indices to the front of ROWS and their count into COUNT. Grids are sized for all N rows (the
host never reads the count) and every program whose rows lie past COUNT returns at once, so
unlabeled rows reach no matmul.

Forward, one launch: a program owns BLOCK_M labeled rows and one of N_SPLIT contiguous vocab
ranges (the split keeps the GPU busy when few rows are labeled) and walks it in BLOCK_V blocks,
computing each logits block by tl.dot over H and folding it into an online log-sum-exp (base 2);
its partial (max, sum, label logit, logit sum) per row is stored, and a few elementwise torch ops
merge the splits. No logits are written.

Backward, per chunk of CHUNK labeled rows (the chunk's rows × V buffer bounded by CHUNK_BYTES):
  1. d(logits) = logits GEMM (rows × V, K = H) whose epilogue turns each tile into
     grad·(softmax·(1 + 2 z_loss lse) − smoothing/V − (1 − smoothing)·onehot) — the in-place
     softmax-gradient pass of the chunked design, fused into the GEMM that produces the logits —
     written once to the chunk buffer (input dtype; fp32 for fp32 inputs);
  2. dh[rows] = d(logits) · W  (rows × H, K = V), each row written by one program;
  3. dW (+)= d(logits)ᵀ · h[rows] (V × H, K = chunk rows) and db (+)= column sums, each tile
     owned by one program: the first chunk stores, later chunks add (stream-ordered, no atomics).
All GEMMs accumulate in fp32 on tensor cores (exact fp32 products for fp32 inputs). Four GEMMs
over labeled rows in all (Liger's design computes the gradients during the forward, three GEMMs
over every row, and keeps them until backward): recomputing the logits in backward keeps no
weight-sized gradient alive between forward and backward, serves reduction="none" with any
per-row output gradient, costs one GEMM in evaluation, and lets ZeRO-3 gather the weight for
each pass as it does for any linear layer.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, gpu_target, launch, next_pow2, require_package_name
from ptft_fast.kernels._jit_common import dot

require_package_name(__name__)

LOG2E = math.log2(math.e)
# bytes of the backward's chunk buffer (chunk rows × V); also sets how often dW is revisited
CHUNK_BYTES = 128 << 20


@triton.jit
def _labeled_rows(ROWS, COUNT, first_slot, BLOCK_M: tl.constexpr):
    """(in-count mask (BLOCK_M,), row indices int64, count) of packed slots first_slot ..
    first_slot + BLOCK_M - 1."""
    n_valid = tl.load(COUNT)
    slot = first_slot + tl.arange(0, BLOCK_M)
    rmask = slot < n_valid
    idx = tl.load(ROWS + slot, mask=rmask, other=0).to(tl.int64)
    return rmask, idx, n_valid


@triton.jit
def _logits_tile(HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    """(BLOCK_M, BLOCK_V) fp32 logits of hidden rows ``idx`` against vocab rows ``offs_v``."""
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
        z += dot(x, tl.trans(w), IEEE)
    if HAS_BIAS:
        z += tl.load(BIAS + offs_v, mask=vmask, other=0.0).to(tl.float32)[None, :]
    return z


@triton.jit
def _linear_cross_entropy_fwd_kernel(
    HID, W, BIAS, LABELS, ROWS, COUNT, M_PART, L_PART, ZL_PART, ZS_PART,
    n_rows, n_hidden, n_vocab, split_len,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Partials of vocab split program_id(1) for BLOCK_M labeled rows, stored at [split, row]:
    running max and sum of the base-2 log-sum-exp, label logit, sum of logits."""
    rmask, idx, n_valid = _labeled_rows(ROWS, COUNT, tl.program_id(0) * BLOCK_M, BLOCK_M)
    if tl.program_id(0) * BLOCK_M >= n_valid:  # only labeled rows are computed
        return
    split = tl.program_id(1)
    label = tl.load(LABELS + idx, mask=rmask, other=0).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_label = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    v_end = tl.minimum(n_vocab, (split + 1) * split_len)
    for v0 in range(split * split_len, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < v_end
        z = _logits_tile(
            HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_H
        )
        z_label += tl.sum(tl.where(offs_v[None, :] == label[:, None], z, 0.0), axis=1)
        z_sum += tl.sum(tl.where(vmask[None, :], z, 0.0), axis=1)
        z2 = tl.where(vmask[None, :], z * 1.4426950408889634, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z2, axis=1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(z2 - m_new[:, None]), axis=1)
        m_i = m_new
    part = split * n_rows + idx
    tl.store(M_PART + part, m_i, mask=rmask)
    tl.store(L_PART + part, l_i, mask=rmask)
    tl.store(ZL_PART + part, z_label, mask=rmask)
    tl.store(ZS_PART + part, z_sum, mask=rmask)


@triton.jit
def _linear_cross_entropy_dlogits_kernel(
    HID, W, BIAS, LABELS, ROWS, COUNT, LSE, GRAD, DLOGITS,
    chunk_start, n_hidden, n_vocab, smoothing, z_loss,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """DLOGITS (CHUNK, V) = d(sum grad·loss)/d(logits) of the chunk's rows BLOCK_M at a time:
    the logits tile by GEMM, turned into its gradient in the epilogue. Rows past COUNT: zeros
    where the chunk is partly labeled, nothing where the block is past COUNT entirely."""
    local = tl.program_id(0) * BLOCK_M
    rmask, idx, n_valid = _labeled_rows(ROWS, COUNT, chunk_start + local, BLOCK_M)
    if chunk_start + local >= n_valid:
        return
    offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = offs_v < n_vocab
    z = _logits_tile(
        HID, W, BIAS, idx, rmask, offs_v, vmask, n_hidden, HAS_BIAS, IEEE, BLOCK_M, BLOCK_V, BLOCK_H
    )
    label = tl.load(LABELS + idx, mask=rmask, other=0).to(tl.int32)
    lse = tl.load(LSE + idx, mask=rmask, other=0.0)
    g = tl.load(GRAD + idx, mask=rmask, other=0.0)  # d(total)/d(row loss)
    coef = g * (1.0 + 2.0 * z_loss * lse)
    # dloss/dz = softmax·(1 + 2 z_loss lse) - smoothing/V - (1 - smoothing)·onehot(label)
    d = (
        tl.math.exp2((z - lse[:, None]) * 1.4426950408889634) * coef[:, None]
        - (g * smoothing / n_vocab)[:, None]
    )
    d -= tl.where(offs_v[None, :] == label[:, None], ((1.0 - smoothing) * g)[:, None], 0.0)
    d = tl.where(rmask[:, None], d, 0.0)
    rows_local = local + tl.arange(0, BLOCK_M)
    ptr = DLOGITS + rows_local.to(tl.int64)[:, None] * n_vocab + offs_v[None, :]
    tl.store(ptr, d.to(DLOGITS.dtype.element_ty), mask=vmask[None, :])


@triton.jit
def _linear_cross_entropy_dh_kernel(
    DLOGITS, W, ROWS, COUNT, DH, chunk_start, n_hidden, n_vocab, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    """DH[rows] (BLOCK_M, BLOCK_H) = DLOGITS[chunk rows] (BLOCK_M, V) @ W[:, h-block] (V, BLOCK_H)."""
    local = tl.program_id(0) * BLOCK_M
    rmask, idx, n_valid = _labeled_rows(ROWS, COUNT, chunk_start + local, BLOCK_M)
    if chunk_start + local >= n_valid:
        return
    rows_local = (local + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs_h < n_hidden
    acc = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    for v0 in range(0, n_vocab, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        vmask = offs_v < n_vocab
        d = tl.load(DLOGITS + rows_local[:, None] * n_vocab + offs_v[None, :], mask=vmask[None, :], other=0.0)
        w = tl.load(
            W + offs_v.to(tl.int64)[:, None] * n_hidden + offs_h[None, :],
            mask=vmask[:, None] & hmask[None, :],
            other=0.0,
        )
        acc += dot(d, w.to(d.dtype), IEEE)
    ptr = DH + idx[:, None] * n_hidden + offs_h[None, :]
    tl.store(ptr, acc.to(DH.dtype.element_ty), mask=rmask[:, None] & hmask[None, :])


@triton.jit
def _linear_cross_entropy_dw_kernel(
    DLOGITS, HID, ROWS, COUNT, DW, DB, chunk_start, chunk_rows, n_hidden, n_vocab,
    ACCUMULATE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """DW[v-block, h-block] (BLOCK_V, BLOCK_H) (+)= DLOGITS[:n]ᵀ @ HID[rows[:n]], n = the chunk's
    labeled rows; DB[v-block] (+)= column sums (programs of the first h-block). ACCUMULATE: add
    to what earlier chunks wrote; else store (the first chunk, also when it has no labeled row)."""
    n_valid = tl.load(COUNT)
    n_chunk = tl.minimum(n_valid - chunk_start, chunk_rows)
    if ACCUMULATE and n_chunk <= 0:
        return
    offs_v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = offs_v < n_vocab
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = offs_h < n_hidden
    acc = tl.zeros([BLOCK_V, BLOCK_H], dtype=tl.float32)
    col_sum = tl.zeros([BLOCK_V], dtype=tl.float32)
    for m0 in range(0, n_chunk, BLOCK_M):
        rows_local = m0 + tl.arange(0, BLOCK_M)
        mmask = rows_local < n_chunk
        idx = tl.load(ROWS + chunk_start + rows_local, mask=mmask, other=0).to(tl.int64)
        d = tl.load(
            DLOGITS + rows_local.to(tl.int64)[:, None] * n_vocab + offs_v[None, :],
            mask=mmask[:, None] & vmask[None, :],
            other=0.0,
        )
        x = tl.load(
            HID + idx[:, None] * n_hidden + offs_h[None, :], mask=mmask[:, None] & hmask[None, :], other=0.0
        )
        acc += dot(tl.trans(d), x.to(d.dtype), IEEE)
        if HAS_BIAS:
            col_sum += tl.sum(d.to(tl.float32), axis=0)
    ptr = DW + offs_v.to(tl.int64)[:, None] * n_hidden + offs_h[None, :]
    mask = vmask[:, None] & hmask[None, :]
    if ACCUMULATE:
        acc += tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, acc.to(DW.dtype.element_ty), mask=mask)
    if HAS_BIAS and tl.program_id(1) == 0:
        if ACCUMULATE:
            col_sum += tl.load(DB + offs_v, mask=vmask, other=0.0)
        tl.store(DB + offs_v, col_sum, mask=vmask)


# (BLOCK_M rows, BLOCK_V, BLOCK_H, num_warps) per kernel, and num_stages. 16-bit inputs: tensor-
# core tiles (M >= 64 per warpgroup: wgmma on sm_90); fp32 (exact products on FMA units): tiles
# whose operands stay in registers; the interpreter: small tiles (short Python loops).
_TILES = {
    "16-bit": ({"fwd": (64, 128, 64, 8), "dlogits": (128, 128, 64, 8), "dh": (128, 64, 64, 4),
                "dw": (64, 128, 64, 4)}, 3),
    "fp32": ({"fwd": (32, 64, 32, 4), "dlogits": (32, 64, 32, 4), "dh": (32, 64, 32, 4), "dw": (32, 64, 32, 4)}, 2),
    "interpreter": ({"fwd": (16, 32, 32, 4), "dlogits": (16, 32, 32, 4), "dh": (16, 32, 32, 4),
                     "dw": (16, 32, 32, 4)}, 1),
}  # fmt: skip


def _tiles(
    dtype: torch.dtype, device: torch.device, n_hidden: int, n_vocab: int
) -> dict[str, dict[str, int]]:
    """Launch options per kernel from :data:`_TILES`, V and H blocks shrunk to the (power-of-two,
    >= 16) size of a small V or H."""
    kind = "interpreter" if gpu_target(device) is None else "fp32" if dtype == torch.float32 else "16-bit"
    tiles, stages = _TILES[kind]
    v_cap, h_cap = max(16, next_pow2(n_vocab)), max(16, next_pow2(n_hidden))
    return {
        name: dict(BLOCK_M=m, BLOCK_V=min(v, v_cap), BLOCK_H=min(h, h_cap), num_warps=w, num_stages=stages)
        for name, (m, v, h, w) in tiles.items()
    }


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
        n_split = max(
            1, min(v_blocks, 16, triton.cdiv(8 * 2 * target.sm_count, triton.cdiv(n_rows, block_m)))
        )
    split_len = triton.cdiv(v_blocks, n_split) * block_v
    return triton.cdiv(n_vocab, split_len), split_len


def chunk_rows(n_rows: int, n_vocab: int, itemsize: int, block_m: int) -> int:
    """Labeled rows per backward chunk: as many as CHUNK_BYTES of (rows, V) d(logits) hold, a
    multiple of block_m, at least one block, at most all rows."""
    rows = max(block_m, CHUNK_BYTES // (n_vocab * itemsize) // block_m * block_m)
    return min(rows, triton.cdiv(n_rows, block_m) * block_m)


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
        loss (N,) fp32 (0 at ignored rows), lse (N,) fp32, natural log (undefined at ignored rows).
    """
    hidden, weight, bias, labels = contiguous(hidden, weight, bias, labels)
    n_rows, n_hidden = hidden.shape
    n_vocab = weight.shape[0]
    tiles = _tiles(hidden.dtype, hidden.device, n_hidden, n_vocab)["fwd"]
    n_split, split_len = _vocab_split(n_rows, n_vocab, tiles["BLOCK_M"], tiles["BLOCK_V"], hidden.device)
    # partials of ignored rows stay at the neutral (-inf, 0, 0, 0)
    m_part = torch.full((n_split, n_rows), float("-inf"), dtype=torch.float32, device=hidden.device)
    l_part, zl_part, zs_part = (torch.zeros_like(m_part) for _ in range(3))
    launch(_linear_cross_entropy_fwd_kernel, (triton.cdiv(n_rows, tiles["BLOCK_M"]), n_split),
        hidden, weight, bias, labels, rows, count, m_part, l_part, zl_part, zs_part,
        n_rows, n_hidden, n_vocab, split_len, HAS_BIAS=bias is not None, IEEE=hidden.dtype == torch.float32, **tiles,
    )  # fmt: skip
    # merge the splits' online log-sum-exp states (base 2), then back to natural units
    m = m_part.amax(0)
    labeled = torch.isfinite(m)
    m = torch.where(labeled, m, 0.0)
    total = (l_part * torch.exp2(m_part - m)).sum(0)
    lse = (m + torch.log2(torch.where(labeled, total, 1.0))) / LOG2E
    z_label, z_sum = zl_part.sum(0), zs_part.sum(0)
    loss = (1.0 - smoothing) * (lse - z_label) + smoothing * (lse - z_sum / n_vocab) + z_loss * lse * lse
    return torch.where(labeled, loss, 0.0), lse


def linear_cross_entropy_bwd(hidden, weight, bias, labels, rows, count, lse, grad_rows, smoothing, z_loss):
    """Gradients of sum(grad_rows · loss).

    Args: as :func:`linear_cross_entropy_fwd`, plus lse (N,) from it and grad_rows (N,) fp32.

    Returns:
        dh (N, H) like hidden (0 at ignored rows), dW (V, H) like weight, db (V,) fp32 or None.
    """
    hidden, weight, bias, labels, grad_rows = contiguous(hidden, weight, bias, labels, grad_rows)
    n_rows, n_hidden = hidden.shape
    n_vocab = weight.shape[0]
    tiles = _tiles(hidden.dtype, hidden.device, n_hidden, n_vocab)
    dl, dhk, dwk = tiles["dlogits"], tiles["dh"], tiles["dw"]
    chunk = chunk_rows(n_rows, n_vocab, hidden.element_size(), dl["BLOCK_M"])
    n_chunks = triton.cdiv(n_rows, chunk)
    dlogits = torch.empty((chunk, n_vocab), dtype=hidden.dtype, device=hidden.device)
    dh = torch.zeros((n_rows, n_hidden), dtype=hidden.dtype, device=hidden.device)
    # one chunk writes dW once, in its dtype; more chunks accumulate in fp32
    dw = torch.empty(
        weight.shape, dtype=weight.dtype if n_chunks == 1 else torch.float32, device=hidden.device
    )
    db = torch.empty(n_vocab, dtype=torch.float32, device=hidden.device) if bias is not None else None
    ieee = hidden.dtype == torch.float32
    for c in range(n_chunks):  # chunks past the labeled rows launch programs that return at once
        start = c * chunk
        launch(_linear_cross_entropy_dlogits_kernel, (triton.cdiv(chunk, dl["BLOCK_M"]), triton.cdiv(n_vocab, dl["BLOCK_V"])),
            hidden, weight, bias, labels, rows, count, lse, grad_rows, dlogits,
            start, n_hidden, n_vocab, smoothing, z_loss, HAS_BIAS=bias is not None, IEEE=ieee, **dl,
        )  # fmt: skip
        launch(_linear_cross_entropy_dh_kernel, (triton.cdiv(chunk, dhk["BLOCK_M"]), triton.cdiv(n_hidden, dhk["BLOCK_H"])),
            dlogits, weight, rows, count, dh, start, n_hidden, n_vocab, IEEE=ieee, **dhk,
        )  # fmt: skip
        launch(_linear_cross_entropy_dw_kernel, (triton.cdiv(n_vocab, dwk["BLOCK_V"]), triton.cdiv(n_hidden, dwk["BLOCK_H"])),
            dlogits, hidden, rows, count, dw, db, start, chunk, n_hidden, n_vocab,
            ACCUMULATE=c > 0, HAS_BIAS=bias is not None, IEEE=ieee, **dwk,
        )  # fmt: skip
    return dh, dw.to(weight.dtype), db
