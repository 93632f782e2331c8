"""FlashAttention-style attention forward (Triton): online softmax over key blocks.

Layout: tokens are rows of (N, H, D) contiguous tensors. Padded batches are the special case of
varlen where sequence b starts at row b·T and has length T, so one kernel serves both: with
VARLEN the start/length of sequence b come from cu_seqlens. Everything that shapes the scores —
causal (aligned bottom-right per sequence), key padding mask, dense additive bias (any
broadcast, via strides), T5 relative position bias (looked up in-kernel), dropout (Philox keyed
by the padded (b, h, i, j) coordinate, so backward and :func:`attention_dropout_keep` regenerate
the same mask) — lives in :func:`_scores` / :func:`_keep`, shared with the backward kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, gpu_target, launch, next_pow2, require_package_name

require_package_name(__name__)


@triton.jit
def _seq_bounds(CU, b, max_len, VARLEN: tl.constexpr):
    """(first row, length) of sequence b."""
    if VARLEN:
        start = tl.load(CU + b).to(tl.int32)
        length = tl.load(CU + b + 1).to(tl.int32) - start
    else:
        start = b * max_len
        length = max_len
    return start, length


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in fp32; exact fp32 products for fp32 inputs (no TF32)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(
    q, k, b, h, offs_m, offs_n, len_q, len_k, scale,
    KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_REL: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Scores block (BM, BN) in fp32: q kᵀ·scale + bias, -inf where masked; and the mask."""
    s = _dot(q, tl.trans(k), IEEE) * scale
    valid = (offs_m[:, None] < len_q) & (offs_n[None, :] < len_k)
    if HAS_BIAS:
        # int64: a dense (B, H, T, T) bias can exceed 2^31 elements
        ptr = BIAS + b.to(tl.int64) * sb_b + h * sb_h + offs_m[:, None] * sb_i + offs_n[None, :] * sb_j
        s += tl.load(ptr, mask=valid, other=0.0).to(tl.float32)
    if HAS_REL:
        # T5: bucket of (j - i) from a (max_q + max_k - 1,) lookup table built by the reference
        # bucketing (exact), then the learned per-head value from the (num_buckets, H) table.
        bucket = tl.load(LUT + (offs_n[None, :] - offs_m[:, None] + max_q - 1), mask=valid, other=0)
        s += tl.load(TABLE + bucket * n_heads + h, mask=valid, other=0.0).to(tl.float32)
    if HAS_KPM:
        valid &= tl.load(KPM + b * max_k + offs_n, mask=offs_n < len_k, other=0)[None, :] != 0
    if CAUSAL:
        valid &= offs_n[None, :] <= offs_m[:, None] + (len_k - len_q)
    return tl.where(valid, s, float("-inf")), valid


@triton.jit
def _keep(seed, b, h, n_heads, offs_m, offs_n, max_q, max_k, p):
    """Dropout keep mask (BM, BN) for the padded coordinate (b, h, i, j)."""
    row = ((b * n_heads + h) * max_q + offs_m).to(tl.int64)
    return tl.rand(seed, row[:, None] * max_k + offs_n[None, :]) >= p


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, OUT, LSE, CU_Q, CU_K, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE,
    n_heads, n_kv_heads, head_dim, max_q, max_k, scale, p, seed,
    VARLEN: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_REL: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    hk = h // (n_heads // n_kv_heads)  # GQA/MQA: query head h reads kv head hk
    q0, len_q = _seq_bounds(CU_Q, b, max_q, VARLEN)
    k0, len_k = _seq_bounds(CU_K, b, max_k, VARLEN)
    m_start = pid_m * BLOCK_M
    if m_start >= len_q:
        return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < head_dim
    qmask = (offs_m[:, None] < len_q) & dmask
    q_off = (q0 + offs_m[:, None]).to(tl.int64) * (n_heads * head_dim) + h * head_dim + offs_d[None, :]
    q = tl.load(Q + q_off, mask=qmask, other=0.0)
    kv_row = n_kv_heads * head_dim
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    end_n = len_k
    if CAUSAL:  # key blocks entirely above the diagonal are skipped
        end_n = tl.maximum(tl.minimum(len_k, m_start + BLOCK_M + len_k - len_q), 0)
    for n0 in range(0, end_n, BLOCK_N):
        kn = n0 + offs_n
        kv_off = (k0 + kn[:, None]).to(tl.int64) * kv_row + hk * head_dim + offs_d[None, :]
        kvmask = (kn[:, None] < len_k) & dmask
        k = tl.load(K + kv_off, mask=kvmask, other=0.0)
        v = tl.load(V + kv_off, mask=kvmask, other=0.0)
        s, _ = _scores(
            q, k, b, h, offs_m, kn, len_q, len_k, scale,
            KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k,
            CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, IEEE,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN
        pr = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        if DROPOUT:  # the normalizer uses undropped probabilities, the output dropped ones
            pr = tl.where(_keep(seed, b, h, n_heads, offs_m, kn, max_q, max_k, p), pr / (1.0 - p), 0.0)
        acc = acc * alpha[:, None] + _dot(pr.to(v.dtype), v, IEEE)
        m_i = m_new
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]  # queries that see no key give zeros
    lse = tl.where(
        has_key, m_i + tl.log(tl.where(has_key, l_i, 1.0)), float("inf")
    )  # +inf: backward gets P = 0
    tl.store(OUT + q_off, out.to(OUT.dtype.element_ty), mask=qmask)
    tl.store(LSE + (q0 + offs_m) * n_heads + h, lse, mask=offs_m < len_q)


@triton.jit
def _attention_keep_kernel(
    KEEP, n_heads, max_q, max_k, p, seed, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Writes the dropout keep mask of (b, h) = program_id(1) to KEEP (B, H, max_q, max_k)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    base = KEEP + tl.program_id(1).to(tl.int64) * max_q * max_k
    for n0 in range(0, max_k, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        keep = _keep(seed, b, h, n_heads, offs_m, offs_n, max_q, max_k, p)
        mask = (offs_m[:, None] < max_q) & (offs_n[None, :] < max_k)
        tl.store(base + offs_m[:, None] * max_k + offs_n[None, :], keep.to(tl.int8), mask=mask)


def blocks(head_dim: int, dtype: torch.dtype, device: torch.device, backward: bool = False):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages). Head dims pad to a power of two >= 16
    (tl.dot's minimum). Large head dims, 4-byte inputs and the backward (two (BLOCK, D) fp32
    accumulators per program) get smaller tiles so tiles fit in shared memory and registers."""
    block_d = max(16, next_pow2(head_dim))
    if gpu_target(device) is None:
        return 32, 32, block_d, 4, 1
    wide = block_d * (dtype.itemsize // 2)  # tile width in 2-byte units
    if backward:
        if wide > 256:  # fp32 with D = 256: keep the tiles within an A100's 163 KiB
            return 32, 32, block_d, 8, 1
        return 64, 64 if wide <= 128 else 32, block_d, 4 if wide <= 64 else 8, 2
    if wide <= 64:
        return 128, 64, block_d, 4, 3
    return (128, 64, block_d, 8, 2) if wide <= 128 else (64, 32, block_d, 8, 2)


def attention_fwd(
    q, k, v, *, batch, max_q, max_k, cu_q, cu_k, causal, kpm, bias4, rel_lut, rel_table, p, seed, scale
):
    """Forward launcher.

    Args:
        q: (Nq, Hq, D), k/v: (Nk, Hkv, D) contiguous; padded batches flattened to (B·T, H, D).
        batch: B. max_q, max_k: padded lengths (T for padded input, max_seqlen for varlen).
        cu_q, cu_k: (B + 1,) int32/int64 for varlen, else None.
        kpm: (B, Tk) int8 (1 = attend) or None. bias4: 4-D view broadcastable to (B, Hq, Tq, Tk)
        or None. rel_lut: (max_q + max_k - 1,) int32 bucket of each j - i, rel_table:
        (num_buckets, Hq) — T5 bias, or None. p: dropout prob, seed: Philox seed. scale: softmax.

    Returns:
        o (Nq, Hq, D) like q; lse (Nq, Hq) fp32 (+inf for queries that see no key).
    """
    q, k, v, cu_q, cu_k, kpm, rel_lut, rel_table = contiguous(q, k, v, cu_q, cu_k, kpm, rel_lut, rel_table)
    n_q, n_heads, head_dim = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((n_q, n_heads), dtype=torch.float32, device=q.device)
    bm, bn, bd, warps, stages = blocks(head_dim, q.dtype, q.device)
    sb = bias4.stride() if bias4 is not None else (0, 0, 0, 0)
    sb = tuple(0 if bias4 is not None and bias4.shape[i] == 1 else s for i, s in enumerate(sb))
    grid = (triton.cdiv(max_q, bm), batch * n_heads)
    launch(_attention_fwd_kernel, grid,
        q, k, v, o, lse, cu_q, cu_k, kpm, bias4, *sb, rel_lut, rel_table,
        n_heads, k.shape[1], head_dim, max_q, max_k, scale, p, seed,
        VARLEN=cu_q is not None, CAUSAL=causal, HAS_KPM=kpm is not None, HAS_BIAS=bias4 is not None,
        HAS_REL=rel_table is not None, DROPOUT=p > 0.0, IEEE=q.dtype == torch.float32,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse


def attention_dropout_keep(batch, n_heads, max_q, max_k, p, seed, device) -> torch.Tensor:
    """The keep mask (B, Hq, max_q, max_k) bool that the kernels use for ``seed`` (for tests and
    for composing reference computations)."""
    keep = torch.empty((batch, n_heads, max_q, max_k), dtype=torch.int8, device=device)
    grid = (triton.cdiv(max_q, 32), batch * n_heads)
    _attention_keep_kernel[grid](keep, n_heads, max_q, max_k, p, seed, BLOCK_M=32, BLOCK_N=32)
    return keep.bool()
