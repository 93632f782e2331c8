"""FlashAttention-style attention backward (Triton), with a deterministic option.

Every pass recomputes P = exp(S - lse) block by block. A program per key block accumulates dK
and dV, looping over the query heads of its GQA group and over query blocks. Default (fast):
that same pass adds each block's dQ contribution with fp32 atomics. Deterministic (with
``torch.use_deterministic_algorithms(True)``): a second kernel, one program per query block,
accumulates dQ (and the bias gradients) itself, so every output element is owned by one program
and the result is bitwise reproducible — except the T5 table gradient, whose (bucket, head)
cells are shared by many (i, j) and always use fp32 atomics.

With dropout, O = (P ∘ Z) V for Z = keep / (1 - p): dV = (P ∘ Z)ᵀ dO, dP = (dO Vᵀ) ∘ Z,
dS = P ∘ (dP - δ) where δ = rowsum(dO ∘ O).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, launch, require_package_name
from ptft_fast.kernels.attention import _dot, _keep, _scores, _seq_bounds, blocks

require_package_name(__name__)


@triton.jit
def _attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DBIAS, DTABLE,
    CU_Q, CU_K, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE,
    n_heads, n_kv_heads, head_dim, max_q, max_k, scale, p, seed,
    VARLEN: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_REL: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    BIAS_GRAD: tl.constexpr, REL_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // n_heads
    h = tl.program_id(1) % n_heads
    hk = h // (n_heads // n_kv_heads)
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
    do = tl.load(DO + q_off, mask=qmask, other=0.0)
    row = (q0 + offs_m) * n_heads + h
    lse = tl.load(LSE + row, mask=offs_m < len_q, other=float("inf"))
    delta = tl.load(DELTA + row, mask=offs_m < len_q, other=0.0)
    kv_row = n_kv_heads * head_dim
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    end_n = len_k
    if CAUSAL:
        end_n = tl.maximum(tl.minimum(len_k, m_start + BLOCK_M + len_k - len_q), 0)
    for n0 in range(0, end_n, BLOCK_N):
        kn = n0 + offs_n
        kv_off = (k0 + kn[:, None]).to(tl.int64) * kv_row + hk * head_dim + offs_d[None, :]
        kvmask = (kn[:, None] < len_k) & dmask
        k = tl.load(K + kv_off, mask=kvmask, other=0.0)
        v = tl.load(V + kv_off, mask=kvmask, other=0.0)
        s, valid = _scores(
            q, k, b, h, offs_m, kn, len_q, len_k, scale,
            KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k,
            CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, IEEE,
        )  # fmt: skip
        pr = tl.exp(s - lse[:, None])
        dp = _dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            dp = tl.where(_keep(seed, b, h, n_heads, offs_m, kn, max_q, max_k, p), dp / (1.0 - p), 0.0)
        ds = pr * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
        inside = (offs_m[:, None] < len_q) & (kn[None, :] < len_k)
        if BIAS_GRAD:  # (B, H, max_q, max_k) fp32; the launcher sums it to the bias's shape
            base = (b * n_heads + h).to(tl.int64) * max_q * max_k
            tl.store(DBIAS + base + offs_m[:, None] * max_k + kn[None, :], ds, mask=inside)
        if REL_GRAD:
            bucket = tl.load(LUT + (kn[None, :] - offs_m[:, None] + max_q - 1), mask=inside, other=0)
            tl.atomic_add(DTABLE + bucket * n_heads + h, ds, mask=inside & valid)
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ32, DBIAS, DTABLE,
    CU_Q, CU_K, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE,
    n_heads, n_kv_heads, head_dim, max_q, max_k, scale, p, seed,
    VARLEN: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_REL: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    FUSED_DQ: tl.constexpr, BIAS_GRAD: tl.constexpr, REL_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    b = tl.program_id(1) // n_kv_heads
    hk = tl.program_id(1) % n_kv_heads
    group = n_heads // n_kv_heads
    q0, len_q = _seq_bounds(CU_Q, b, max_q, VARLEN)
    k0, len_k = _seq_bounds(CU_K, b, max_k, VARLEN)
    n_start = pid_n * BLOCK_N
    if n_start >= len_k:
        return
    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d[None, :] < head_dim
    kvmask = (offs_n[:, None] < len_k) & dmask
    kv_off = (k0 + offs_n[:, None]).to(tl.int64) * (n_kv_heads * head_dim) + hk * head_dim + offs_d[None, :]
    k = tl.load(K + kv_off, mask=kvmask, other=0.0)
    v = tl.load(V + kv_off, mask=kvmask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    begin_m = 0
    if CAUSAL:  # query blocks entirely above the diagonal see none of these keys
        begin_m = tl.maximum(n_start - (len_k - len_q), 0) // BLOCK_M * BLOCK_M
    for h in range(hk * group, (hk + 1) * group):
        for m0 in range(begin_m, len_q, BLOCK_M):
            offs_m = m0 + offs_m0
            qmask = (offs_m[:, None] < len_q) & dmask
            q_off = (
                (q0 + offs_m[:, None]).to(tl.int64) * (n_heads * head_dim) + h * head_dim + offs_d[None, :]
            )
            q = tl.load(Q + q_off, mask=qmask, other=0.0)
            do = tl.load(DO + q_off, mask=qmask, other=0.0)
            row = (q0 + offs_m) * n_heads + h
            lse = tl.load(LSE + row, mask=offs_m < len_q, other=float("inf"))
            delta = tl.load(DELTA + row, mask=offs_m < len_q, other=0.0)
            s, valid = _scores(
                q, k, b, h, offs_m, offs_n, len_q, len_k, scale,
                KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k,
                CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, IEEE,
            )  # fmt: skip
            pr = tl.exp(s - lse[:, None])  # (BM, BN)
            dp = _dot(do, tl.trans(v), IEEE)
            if DROPOUT:
                keep = _keep(seed, b, h, n_heads, offs_m, offs_n, max_q, max_k, p)
                dv += _dot(tl.trans(tl.where(keep, pr / (1.0 - p), 0.0).to(do.dtype)), do, IEEE)
                dp = tl.where(keep, dp / (1.0 - p), 0.0)
            else:
                dv += _dot(tl.trans(pr.to(do.dtype)), do, IEEE)
            ds = pr * (dp - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
            if FUSED_DQ:  # non-deterministic mode: one pass, dQ summed over key blocks atomically
                tl.atomic_add(DQ32 + q_off, _dot(ds.to(k.dtype), k, IEEE) * scale, mask=qmask)
            inside = (offs_m[:, None] < len_q) & (offs_n[None, :] < len_k)
            if BIAS_GRAD:
                base = (b * n_heads + h).to(tl.int64) * max_q * max_k
                tl.store(DBIAS + base + offs_m[:, None] * max_k + offs_n[None, :], ds, mask=inside)
            if REL_GRAD:
                bucket = tl.load(LUT + (offs_n[None, :] - offs_m[:, None] + max_q - 1), mask=inside, other=0)
                tl.atomic_add(DTABLE + bucket * n_heads + h, ds, mask=inside & valid)
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kvmask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kvmask)


def attention_bwd(
    do, q, k, v, o, lse, *, batch, max_q, max_k, cu_q, cu_k, causal, kpm, bias4, rel_lut, rel_table,
    p, seed, scale, bias_grad, rel_grad, deterministic=True,
):  # fmt: skip
    """Backward launcher; arguments as :func:`ptft_fast.kernels.attention.attention_fwd` plus
    do (Nq, Hq, D), o and lse from the forward. ``deterministic``: separate dQ pass (bitwise
    reproducible, no atomics on dQ); else a single pass accumulating dQ with fp32 atomics.

    Returns:
        dq, dk, dv like q, k, v; dbias_full (B, Hq, max_q, max_k) fp32 or None (``bias_grad``);
        dtable (num_buckets, Hq) fp32 or None (``rel_grad``).
    """
    do, q, k, v, cu_q, cu_k, kpm, rel_lut, rel_table = contiguous(
        do, q, k, v, cu_q, cu_k, kpm, rel_lut, rel_table
    )
    n_heads, head_dim = q.shape[1], q.shape[2]
    n_kv = k.shape[1]
    delta = (do.float() * o.float()).sum(-1)  # (Nq, Hq)
    dq, dk, dv = torch.empty_like(q) if deterministic else None, torch.empty_like(k), torch.empty_like(v)
    dbias = (
        torch.zeros((batch, n_heads, max_q, max_k), dtype=torch.float32, device=q.device)
        if bias_grad
        else None
    )
    dtable = torch.zeros(rel_table.shape, dtype=torch.float32, device=q.device) if rel_grad else None
    bm, bn, bd, warps, stages = blocks(head_dim, q.dtype, q.device, backward=True)
    sb = bias4.stride() if bias4 is not None else (0, 0, 0, 0)
    sb = tuple(0 if bias4 is not None and bias4.shape[i] == 1 else s for i, s in enumerate(sb))
    common = (cu_q, cu_k, kpm, bias4, *sb, rel_lut, rel_table, n_heads, n_kv, head_dim, max_q, max_k)
    flags = dict(
        VARLEN=cu_q is not None, CAUSAL=causal, HAS_KPM=kpm is not None, HAS_BIAS=bias4 is not None,
        HAS_REL=rel_table is not None, DROPOUT=p > 0.0, IEEE=q.dtype == torch.float32,
        BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    dkdv_grid = (triton.cdiv(max_k, bn), batch * n_kv)
    if deterministic:
        launch(_attention_bwd_dq_kernel, (triton.cdiv(max_q, bm), batch * n_heads),
            q, k, v, do, lse, delta, dq, dbias, dtable, *common, scale, p, seed,
            BIAS_GRAD=bias_grad, REL_GRAD=rel_grad, BLOCK_M=bm, BLOCK_N=bn, **flags,
        )  # fmt: skip
        # dK/dV programs own key blocks: use the key-block size as their row tile
        launch(_attention_bwd_dkdv_kernel, dkdv_grid,
            q, k, v, do, lse, delta, dk, dv, None, None, None, *common, scale, p, seed,
            FUSED_DQ=False, BIAS_GRAD=False, REL_GRAD=False, BLOCK_M=bn, BLOCK_N=bm, **flags,
        )  # fmt: skip
    else:
        dq32 = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        launch(_attention_bwd_dkdv_kernel, dkdv_grid,
            q, k, v, do, lse, delta, dk, dv, dq32, dbias, dtable, *common, scale, p, seed,
            FUSED_DQ=True, BIAS_GRAD=bias_grad, REL_GRAD=rel_grad, BLOCK_M=bn, BLOCK_N=bm, **flags,
        )  # fmt: skip
        dq = dq32.to(q.dtype)
    return dq, dk, dv, dbias, dtable
