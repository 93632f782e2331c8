"""FlashAttention-style attention backward (Triton).

A pre-kernel computes δ = rowsum(dO ∘ O) (fp32, one value per query row and head). Every pass then
recomputes P = exp2(S·log2(e) - lse) block by block, skipping the masks in blocks that every row
sees entirely (as the forward does). A program per key block accumulates dK and dV, looping over
the query heads of its GQA group and over query blocks, on the transposed (keys × queries) block.

dQ, two strategies chosen per launch by :func:`fused_dq_fits`:
  * fused (plain attention, D <= 64, not deterministic): the dK/dV pass also adds each block
    pair's dQ with relaxed fp32 atomics — 5 GEMMs per block pair, FlashAttention-2's design;
  * two-pass (``torch.use_deterministic_algorithms(True)``, D > 64, bias, T5 bias or dropout): a
    second kernel, one program per query block, accumulates dQ (and the bias gradients) itself,
    recomputing S and dP — 7 GEMMs, no atomics, bitwise reproducible (except the T5 table
    gradient, whose (bucket, head) cells are shared by many (i, j) and use atomics). The kernel
    report card shows the fused pass spilling registers in those cases.

With dropout, O = (P ∘ Z) V for Z = keep / (1 - p): dV = (P ∘ Z)ᵀ dO, dP = (dO Vᵀ) ∘ Z,
dS = P ∘ (dP - δ).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, launch, require_package_name
from ptft_fast.kernels._jit_common import dot
from ptft_fast.kernels.attention import (
    AUTOTUNE_KEY,
    bias_strides,
    config_pruner,
    dropout_keep,
    fixed_tiles,
    head_block,
    head_tile,
    launch_tiles,
    load_pair,
    program_sequence,
    scores,
    seq_bucket,
    seq_prefix,
    visible_key_range,
)

require_package_name(__name__)


@triton.jit
def _attention_bwd_delta_kernel(
    OUT, DO, DELTA, n_rows, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    """DELTA (n_rows,) fp32 = rowsum(OUT ∘ DO) over rows of HEAD_DIM elements (row = token·Hq + h)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < HEAD_DIM)
    off = rows[:, None].to(tl.int64) * HEAD_DIM + cols[None, :]
    o = tl.load(OUT + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, axis=1), mask=rows < n_rows)


@triton.jit
def _query_rows(Q, DO, LSE, DELTA, q0, offs_m, len_q, n_heads, h,
                MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """q, dO tiles (BM, BLOCK_D), lse and δ (BM,) of query rows offs_m of head h, and the tile's
    element offsets and mask (rows past len_q: zeros, lse = +inf so P = 0)."""
    q_off, q_mask = head_tile(q0, offs_m, len_q, n_heads, h, HEAD_DIM, BLOCK_D)
    row = (q0 + offs_m) * n_heads + h
    q, do = load_pair(Q, DO, q_off, q_mask, MASKED, HEAD_DIM, BLOCK_D)
    if MASKED:
        lse = tl.load(LSE + row, mask=offs_m < len_q, other=float("inf"))
        delta = tl.load(DELTA + row, mask=offs_m < len_q, other=0.0)
    else:
        lse = tl.load(LSE + row)
        delta = tl.load(DELTA + row)
    return q, do, lse, delta, q_off, q_mask


@triton.jit
def _bias_grads(ds, valid, DBIAS, DTABLE, LUT, b, h, n_heads, offs_m, offs_n, len_q, len_k, max_q, max_k,
                BIAS_GRAD: tl.constexpr, REL_GRAD: tl.constexpr):  # fmt: skip
    """dS (BM, BN) of the block into the dense bias gradient (B, H, max_q, max_k) and the T5 table's."""
    inside = (offs_m[:, None] < len_q) & (offs_n[None, :] < len_k)
    if BIAS_GRAD:  # fp32, each (i, j) written by one program; the launcher sums broadcast dims
        base = (b * n_heads + h).to(tl.int64) * max_q * max_k
        tl.store(DBIAS + base + offs_m[:, None] * max_k + offs_n[None, :], ds, mask=inside)
    if REL_GRAD:
        bucket = tl.load(LUT + (offs_n[None, :] - offs_m[:, None] + max_q - 1), mask=inside, other=0)
        tl.atomic_add(DTABLE + bucket * n_heads + h, ds, mask=inside & valid, sem="relaxed")


@triton.jit
def _dkdv_query_blocks(
    dk, dv, k, v, Q, DO, LSE, DELTA, DQ32, q0, len_q, len_k, begin, mid, full_end, b, h, offs_n,
    n_start, qk_scale, sm_scale, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed,
    prefix, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_REL: tl.constexpr,
    HAS_PREFIX: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr, FUSED_DQ: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dK, dV (BN, BLOCK_D) fp32 updated over the query blocks begin .. len_q of head h. One loop
    body for all blocks: those in [mid, full_end) see every key of the block and skip the masks (a
    branch uniform over the program), the others are masked — a second, masked copy of the loop
    would hold its own registers and push the program past 255. Works on the transposed block
    (keys × queries): Pᵀ and dSᵀ are then the A operands of dV += Pᵀ dO and dK += dSᵀ Q straight
    from registers."""
    for m0 in range(begin, len_q, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        need_mask = (m0 < mid) | (m0 + BLOCK_M > full_end)
        q, do, lse, delta, q_off, q_mask = _query_rows(
            Q, DO, LSE, DELTA, q0, offs_m, len_q, n_heads, h, True, HEAD_DIM, BLOCK_D
        )
        st, _ = scores(
            q, k, b, h, offs_m, offs_n, len_q, len_k, qk_scale,
            KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, need_mask, prefix,
            2, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, IEEE, True,
        )  # fmt: skip
        pt = tl.math.exp2(st - lse[None, :])  # (BN, BM)
        dpt = dot(v, tl.trans(do), IEEE)
        if DROPOUT:
            keep = tl.trans(dropout_keep(seed, b, h, n_heads, offs_m, n_start, max_q, max_k, p, BLOCK_N))
            inv_keep = 1.0 / (1.0 - p)
            dv += dot(tl.where(keep, pt * inv_keep, 0.0).to(do.dtype), do, IEEE)
            dpt = tl.where(keep, dpt * inv_keep, 0.0)
        else:
            dv += dot(pt.to(do.dtype), do, IEEE)
        dst = pt * (dpt - delta[None, :])
        dk += dot(dst.to(q.dtype), q, IEEE)
        if FUSED_DQ:  # summed over key blocks in any order: relaxed ordering suffices
            dq = dot(tl.trans(dst.to(k.dtype)), k, IEEE) * sm_scale
            tl.atomic_add(DQ32 + q_off, dq, mask=q_mask, sem="relaxed")
    return dk, dv


@triton.jit
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ32,
    CU_Q, CU_K, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, PREFIX,
    n_heads, n_kv_heads, max_q, max_k, seq_bucket, qk_scale, sm_scale, p, seed,
    HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_REL: tl.constexpr, HAS_PREFIX: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr, FUSED_DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program per (key block, b·Hkv + hk); seq_bucket only keys the autotune cache. With
    FUSED_DQ it also adds the block pairs' dQ to DQ32 (fp32, zeroed) by relaxed atomics."""
    b, hk, q0, len_q, k0, len_k = program_sequence(CU_Q, CU_K, n_kv_heads, max_q, max_k, VARLEN)
    prefix = seq_prefix(PREFIX, b, HAS_PREFIX)
    group = n_heads // n_kv_heads
    n_start = tl.program_id(0) * BLOCK_N
    if n_start >= len_k:
        return
    offs_n = n_start + tl.arange(0, BLOCK_N)
    kv_off, kv_mask = head_tile(k0, offs_n, len_k, n_kv_heads, hk, HEAD_DIM, BLOCK_D)
    k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # query blocks [begin, mid) straddle the causal diagonal, [mid, full_end) see all these keys,
    # the rest is the tail (and the tail key block is masked everywhere)
    begin, mid = 0, 0
    if CAUSAL:
        diag = len_k - len_q
        begin = tl.maximum(n_start - diag, 0) // BLOCK_M * BLOCK_M
        mid = tl.maximum(n_start + BLOCK_N - 1 - diag, 0)  # the first row that sees the whole block
        if HAS_PREFIX:  # keys below the prefix length are seen by every query row
            begin = tl.where(n_start < prefix, 0, begin)
            mid = tl.where(n_start + BLOCK_N <= prefix, 0, mid)
    full_end = len_q // BLOCK_M * BLOCK_M
    if n_start + BLOCK_N > len_k:
        full_end = 0
    for h in range(hk * group, (hk + 1) * group):
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, Q, DO, LSE, DELTA, DQ32, q0, len_q, len_k, begin, mid, full_end, b, h, offs_n, n_start,
            qk_scale, sm_scale, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed,
            prefix, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, DROPOUT, IEEE, FUSED_DQ, HEAD_DIM, BLOCK_M,
            BLOCK_N, BLOCK_D,
        )  # fmt: skip
    tl.store(DK + kv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_key_blocks(
    dq, q, do, lse, delta, K, V, DBIAS, DTABLE, k0, len_k, hk, n_kv_heads, lo, hi, b, h, offs_m, len_q,
    qk_scale, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed, prefix,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_REL: tl.constexpr, HAS_PREFIX: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    BIAS_GRAD: tl.constexpr, REL_GRAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dQ (BM, BLOCK_D) fp32 (unscaled) updated over key blocks lo .. hi."""
    for n0 in range(lo, hi, BLOCK_N):
        kn = n0 + tl.arange(0, BLOCK_N)
        kv_off, kv_mask = head_tile(k0, kn, len_k, n_kv_heads, hk, HEAD_DIM, BLOCK_D)
        k, v = load_pair(K, V, kv_off, kv_mask, MASKED, HEAD_DIM, BLOCK_D)
        s, valid = scores(
            q, k, b, h, offs_m, kn, len_q, len_k, qk_scale,
            KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, False, prefix,
            MASKED, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, IEEE,
        )  # fmt: skip
        pr = tl.math.exp2(s - lse[:, None])
        dp = dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            keep = dropout_keep(seed, b, h, n_heads, offs_m, n0, max_q, max_k, p, BLOCK_N)
            dp = tl.where(keep, dp * (1.0 / (1.0 - p)), 0.0)
        ds = pr * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, IEEE)
        _bias_grads(ds, valid, DBIAS, DTABLE, LUT, b, h, n_heads, offs_m, kn, len_q, len_k, max_q, max_k,
                    BIAS_GRAD, REL_GRAD)  # fmt: skip
    return dq


@triton.jit
def _attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DBIAS, DTABLE,
    CU_Q, CU_K, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, PREFIX,
    n_heads, n_kv_heads, max_q, max_k, seq_bucket, qk_scale, sm_scale, p, seed,
    HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_REL: tl.constexpr, HAS_PREFIX: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr, BIAS_GRAD: tl.constexpr, REL_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program per (query block, b·Hq + h): dQ and the bias gradients of its rows."""
    b, h, q0, len_q, k0, len_k = program_sequence(CU_Q, CU_K, n_heads, max_q, max_k, VARLEN)
    prefix = seq_prefix(PREFIX, b, HAS_PREFIX)
    hk = h // (n_heads // n_kv_heads)
    m_start = tl.program_id(0) * BLOCK_M
    if m_start >= len_q:
        return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    q, do, lse, delta, q_off, q_mask = _query_rows(
        Q, DO, LSE, DELTA, q0, offs_m, len_q, n_heads, h, True, HEAD_DIM, BLOCK_D
    )
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full_end, end = visible_key_range(m_start, len_q, len_k, prefix, BLOCK_M, BLOCK_N, CAUSAL, HAS_PREFIX)
    dq = _dq_key_blocks(
        dq, q, do, lse, delta, K, V, DBIAS, DTABLE, k0, len_k, hk, n_kv_heads, 0, full_end, b, h, offs_m,
        len_q, qk_scale, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed, prefix,
        False, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, DROPOUT, IEEE, BIAS_GRAD, REL_GRAD, HEAD_DIM,
        BLOCK_N, BLOCK_D,
    )  # fmt: skip
    dq = _dq_key_blocks(
        dq, q, do, lse, delta, K, V, DBIAS, DTABLE, k0, len_k, hk, n_kv_heads, full_end, end, b, h, offs_m,
        len_q, qk_scale, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed, prefix,
        True, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, DROPOUT, IEEE, BIAS_GRAD, REL_GRAD, HEAD_DIM,
        BLOCK_N, BLOCK_D,
    )  # fmt: skip
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


# dK/dV programs own BLOCK_N keys and stream BLOCK_M queries (the MMAs' M is BLOCK_N: >= 64)
DKDV_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((64, 128, 8, 2), (64, 64, 8, 2), (32, 64, 8, 2))
]
# dQ programs own BLOCK_M queries and stream BLOCK_N keys
DQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (64, 128, 8, 2))
]
_attention_bwd_dkdv_tuned = triton.autotune(
    DKDV_CONFIGS,
    key=[*AUTOTUNE_KEY, "FUSED_DQ"],
    # sm_80: K and V stay in registers as mma.sync fragments, about two more fp32 tiles (ptxas: the
    # 64 x 64 block at D = 64 spills there, the 32 x 64 one does not)
    prune_configs_by={"early_config_prune": config_pruner("BLOCK_N", "BLOCK_M", 2, 2, mma_sync_operands=2)},
    reset_to_zero=["DQ32"],  # atomically accumulated: zero before each trial
)(_attention_bwd_dkdv_kernel)
_attention_bwd_dq_tuned = triton.autotune(
    DQ_CONFIGS,
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": config_pruner("BLOCK_M", "BLOCK_N", 1, 3)},
    reset_to_zero=["DTABLE"],
)(_attention_bwd_dq_kernel)


def fused_dq_fits(head_dim: int, bias4, rel_table, p: float) -> bool:
    """Whether dQ may ride in the dK/dV pass (relaxed fp32 atomics, 5 GEMMs per block pair) rather
    than take its own pass (7 GEMMs, no atomics). The kernel report card shows the fused pass's
    extra (BM, D) tile and atomics push the dK/dV program past 255 registers (spills) at D > 64
    and with bias / T5-bias / dropout terms: those use the two-pass backward."""
    return head_dim <= 64 and bias4 is None and rel_table is None and p == 0.0


def attention_bwd(
    do, q, k, v, o, lse, *, batch, max_q, max_k, cu_q, cu_k, causal, kpm, bias4, rel_lut, rel_table,
    p, seed, scale, bias_grad, rel_grad, deterministic=True, prefix=None,
):  # fmt: skip
    """Backward launcher; arguments as :func:`ptft_fast.kernels.attention.attention_fwd` plus
    do (Nq, Hq, D), o and lse (base 2) from the forward, ``prefix`` as there. ``deterministic``: separate dQ pass
    (bitwise reproducible, no atomics on dQ); else dQ accumulates in the dK/dV pass with fp32
    atomics where :func:`fused_dq_fits`.

    Returns:
        dq, dk, dv like q, k, v; dbias_full (B, Hq, max_q, max_k) fp32 or None (``bias_grad``);
        dtable (num_buckets, Hq) fp32 or None (``rel_grad``).
    """
    do, q, k, v, o, cu_q, cu_k, kpm, rel_lut, rel_table, prefix = contiguous(
        do, q, k, v, o, cu_q, cu_k, kpm, rel_lut, rel_table, prefix
    )
    n_q, n_heads, head_dim = q.shape
    n_kv = k.shape[1]
    block_d = head_block(head_dim)
    two_pass = deterministic or not fused_dq_fits(head_dim, bias4, rel_table, p)
    delta = torch.empty((n_q, n_heads), dtype=torch.float32, device=q.device)
    launch(
        _attention_bwd_delta_kernel, (triton.cdiv(n_q * n_heads, 64),), OUT=o, DO=do, DELTA=delta,
        n_rows=n_q * n_heads, HEAD_DIM=head_dim, BLOCK_R=64, BLOCK_D=block_d, num_warps=4, num_stages=1,
    )  # fmt: skip
    dq, dk, dv = torch.empty_like(q) if two_pass else None, torch.empty_like(k), torch.empty_like(v)
    dbias = (
        torch.zeros((batch, n_heads, max_q, max_k), dtype=torch.float32, device=q.device)
        if bias_grad
        else None
    )
    dtable = torch.zeros(rel_table.shape, dtype=torch.float32, device=q.device) if rel_grad else None
    dq32 = None if two_pass else torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    common = dict(
        Q=q, K=k, V=v, DO=do, LSE=lse, DELTA=delta, CU_Q=cu_q, CU_K=cu_k, KPM=kpm, BIAS=bias4,
        **dict(zip(("sb_b", "sb_h", "sb_i", "sb_j"), bias_strides(bias4), strict=True)),
        LUT=rel_lut, TABLE=rel_table, PREFIX=prefix, n_heads=n_heads, n_kv_heads=n_kv, max_q=max_q,
        max_k=max_k, seq_bucket=seq_bucket(max_k), qk_scale=scale * 1.4426950408889634, sm_scale=scale, p=p,
        seed=seed, HEAD_DIM=head_dim, VARLEN=cu_q is not None, CAUSAL=causal, HAS_KPM=kpm is not None,
        HAS_BIAS=bias4 is not None, HAS_REL=rel_table is not None, HAS_PREFIX=prefix is not None, DROPOUT=p > 0.0,
        IEEE=q.dtype == torch.float32, BLOCK_D=block_d,
    )  # fmt: skip
    dkdv = dict(DK=dk, DV=dv, DQ32=dq32, FUSED_DQ=not two_pass)
    # the dQ pass owns the bias gradients (there is a bias only on the two-pass path)
    dq_args = dict(DQ=dq, DBIAS=dbias, DTABLE=dtable, BIAS_GRAD=bias_grad, REL_GRAD=rel_grad)
    # (BLOCK_M, BLOCK_N, num_warps, num_stages) of the dQ and dK/dV passes, or None: autotuned
    fixed = fixed_tiles(q, ((32, 16, 4, 1), (16, 32, 4, 1)), ((32, 32, 4, 2), (32, 32, 4, 2)))
    if two_pass:
        grid = lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), batch * n_heads)  # noqa: E731
        launch_tiles(_attention_bwd_dq_tuned, grid, fixed and fixed[0], **common, **dq_args)
    grid = lambda meta: (triton.cdiv(max_k, meta["BLOCK_N"]), batch * n_kv)  # noqa: E731
    launch_tiles(_attention_bwd_dkdv_tuned, grid, fixed and fixed[1], **common, **dkdv)
    if not two_pass:
        dq = dq32.to(q.dtype)
    return dq, dk, dv, dbias, dtable
