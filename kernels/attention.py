"""FlashAttention-style attention forward (Triton): online softmax over key blocks.

Layout: tokens are rows of (N, H, D) contiguous tensors. Padded batches are the special case of
varlen where sequence b starts at row b·T and has length T, so one kernel serves both: with
VARLEN the start/length of sequence b come from cu_seqlens. Everything that shapes the scores —
causal (aligned bottom-right per sequence; with a per-sequence prefix length, prefix LM: keys below
it are seen by every query), key padding mask, dense additive bias (any broadcast,
via strides), T5 relative position bias (looked up in-kernel), dropout (the Philox mask of
``_jit_common.keep_mask`` over the padded (b, h, i) rows and j columns, regenerated in backward) —
lives in :func:`scores` / :func:`dropout_keep`, shared with the backward kernels.

Softmax in base 2: scores are scaled by scale·log2(e) once (bias terms by log2(e)), so every
exponential is one exp2. A query block first walks the key blocks it sees entirely (no bounds
or causal mask: only the key padding mask, when given, applies) — those below the causal diagonal
and, for a prefix LM, those inside the prefix — then the few blocks that straddle the diagonal, the
prefix's end or the end of the keys, masked. The log-sum-exp is stored in base 2.

Tiles come from a small autotune set (:data:`FWD_CONFIGS`) keyed on head dim, causal, bias,
dropout, dtype and sequence-length bucket, pruned by shared memory for the GPU at hand.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ptft_fast.kernels._common import contiguous, gpu_target, launch, next_pow2, require_package_name
from ptft_fast.kernels._jit_common import dot, keep_mask

require_package_name(__name__)

LOG2E = math.log2(math.e)


@triton.jit
def seq_bounds(CU, b, max_len, VARLEN: tl.constexpr):
    """(first row, length) of sequence b."""
    if VARLEN:
        start = tl.load(CU + b).to(tl.int32)
        length = tl.load(CU + b + 1).to(tl.int32) - start
    else:
        start = b * max_len
        length = max_len
    return start, length


@triton.jit
def program_sequence(CU_Q, CU_K, heads, max_q, max_k, VARLEN: tl.constexpr):
    """(b, head, first query row, query length, first key row, key length) of the program whose
    program_id(1) is b·heads + head — the set-up every attention kernel starts with."""
    b = tl.program_id(1) // heads
    head = tl.program_id(1) % heads
    q0, len_q = seq_bounds(CU_Q, b, max_q, VARLEN)
    k0, len_k = seq_bounds(CU_K, b, max_k, VARLEN)
    return b, head, q0, len_q, k0, len_k


@triton.jit
def seq_prefix(PREFIX, b, HAS_PREFIX: tl.constexpr):
    """Prefix length of sequence b (prefix LM: keys below it are visible to every query); 0 without."""
    if HAS_PREFIX:
        return tl.load(PREFIX + b).to(tl.int32)
    return 0


@triton.jit
def head_tile(first_row, offs, length, n_heads, head, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Element offsets (BLOCK, BLOCK_D) int64 and in-bounds mask of rows ``first_row + offs`` of one
    head in a (N, n_heads, HEAD_DIM) tensor; rows at or past ``length`` are masked."""
    offs_d = tl.arange(0, BLOCK_D)
    off = (first_row + offs[:, None]).to(tl.int64) * (n_heads * HEAD_DIM) + head * HEAD_DIM + offs_d[None, :]
    mask = offs[:, None] < length
    if BLOCK_D != HEAD_DIM:  # head dims that are not a power of two pad the tile
        mask &= offs_d[None, :] < HEAD_DIM
    return off, mask


@triton.jit
def load_pair(A, B, off, mask, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Two tiles at the same ``off`` of A and B (K and V, or Q and dO): masked loads only where the
    tile may leave the sequence (``MASKED``) or pads the head dim; the unmasked load otherwise."""
    if MASKED or BLOCK_D != HEAD_DIM:
        return tl.load(A + off, mask=mask, other=0.0), tl.load(B + off, mask=mask, other=0.0)
    return tl.load(A + off), tl.load(B + off)


@triton.jit
def scores(
    q, k, b, h, offs_m, offs_n, len_q, len_k, qk_scale,
    KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, need_mask, prefix,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_REL: tl.constexpr, HAS_PREFIX: tl.constexpr, IEEE: tl.constexpr, KEY_MAJOR: tl.constexpr = False,
):  # fmt: skip
    """Scores block in fp32 and base 2: (q kᵀ·scale + bias)·log2(e), -inf where masked; and the
    mask. (BM, BN) with query rows; KEY_MAJOR: its transpose (BN, BM), key rows — the layout in
    which the dK/dV pass feeds P and dS to its matmuls without a register transpose.

    MASKED: 0 — every query row sees every key of the block (no bounds or causal mask; only the
    key padding mask, data, still applies); 1 — the block may hold keys past len_k or above the
    causal diagonal (those below ``prefix`` stay visible when HAS_PREFIX); 2 — as 1 when the runtime flag ``need_mask`` (uniform over the program) is
    set, else as 0: one loop body serves both kinds of blocks."""
    if KEY_MAJOR:
        s = dot(k, tl.trans(q), IEEE) * qk_scale
        qi, kj = offs_m[None, :], offs_n[:, None]
    else:
        s = dot(q, tl.trans(k), IEEE) * qk_scale
        qi, kj = offs_m[:, None], offs_n[None, :]
    inside = qi < len_q  # bias reads stay in bounds for the block's padding rows
    if MASKED:
        inside &= kj < len_k
    if HAS_BIAS:
        # int64: a dense (B, H, T, T) bias can exceed 2^31 elements
        ptr = BIAS + b.to(tl.int64) * sb_b + h * sb_h + qi * sb_i + kj * sb_j
        s += tl.load(ptr, mask=inside, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_REL:
        # T5: bucket of (j - i) from a (max_q + max_k - 1,) lookup table built by the reference
        # bucketing (exact), then the learned per-head value from the (num_buckets, H) table.
        bucket = tl.load(LUT + (kj - qi + max_q - 1), mask=inside, other=0)
        s += tl.load(TABLE + bucket * n_heads + h, mask=inside, other=0.0).to(tl.float32) * 1.4426950408889634
    valid = inside
    if HAS_KPM:
        if MASKED:
            visible = tl.load(KPM + b * max_k + offs_n, mask=offs_n < len_k, other=0) != 0
        else:
            visible = tl.load(KPM + b * max_k + offs_n) != 0
        if KEY_MAJOR:
            valid &= visible[:, None]
        else:
            valid &= visible[None, :]
    if CAUSAL and MASKED:
        seen = kj <= qi + (len_k - len_q)
        if HAS_PREFIX:
            seen |= kj < prefix
        valid &= seen
    if MASKED == 2:
        if need_mask or HAS_KPM:
            s = tl.where(valid, s, float("-inf"))
    elif MASKED or HAS_KPM:
        s = tl.where(valid, s, float("-inf"))
    return s, valid


@triton.jit
def dropout_keep(seed, b, h, n_heads, offs_m, n0, max_q, max_k, p, BLOCK_N: tl.constexpr):
    """Dropout keep mask (BM, BLOCK_N) of keys n0 .. n0 + BLOCK_N - 1 for padded rows (b, h, i)."""
    rows = (b * n_heads + h) * max_q + offs_m
    return keep_mask(seed, rows, n0, max_k, p, BLOCK_N)


@triton.jit
def visible_key_range(
    m_start, len_q, len_k, prefix, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_PREFIX: tl.constexpr,
):  # fmt: skip
    """(full_end, end) for query rows m_start .. m_start + BLOCK_M - 1: key blocks below full_end
    are visible to every row of the block; blocks from full_end to end need the mask."""
    end = len_k
    full_end = len_k // BLOCK_N * BLOCK_N
    if CAUSAL:  # row i sees keys j <= i + (len_k - len_q): skip blocks above the diagonal
        diag = len_k - len_q
        end = tl.maximum(tl.minimum(len_k, m_start + BLOCK_M + diag), 0)
        full_end = tl.maximum(tl.minimum(m_start + diag + 1, len_k), 0) // BLOCK_N * BLOCK_N
        if HAS_PREFIX:  # and keys j < prefix: every row sees the blocks inside the prefix
            pre = tl.maximum(tl.minimum(prefix, len_k), 0)
            end = tl.maximum(end, pre)
            full_end = tl.maximum(full_end, pre // BLOCK_N * BLOCK_N)
    return full_end, end


@triton.jit
def _fwd_key_blocks(
    acc, l_i, m_i, q, K, V, k0, len_k, hk, n_kv_heads, lo, hi, b, h, offs_m, len_q, qk_scale,
    KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed, prefix,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_REL: tl.constexpr, HAS_PREFIX: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Online-softmax update of (acc, l_i, m_i) over key blocks lo .. hi (multiples of BLOCK_N)."""
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(lo, hi, BLOCK_N):
        kn = n0 + offs_n
        kv_off, kv_mask = head_tile(k0, kn, len_k, n_kv_heads, hk, HEAD_DIM, BLOCK_D)
        k, v = load_pair(K, V, kv_off, kv_mask, MASKED, HEAD_DIM, BLOCK_D)
        s, _ = scores(
            q, k, b, h, offs_m, kn, len_q, len_k, qk_scale,
            KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, False, prefix,
            MASKED, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, IEEE,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN
        pr = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        if DROPOUT:  # the normalizer uses undropped probabilities, the output dropped ones
            keep = dropout_keep(seed, b, h, n_heads, offs_m, n0, max_q, max_k, p, BLOCK_N)
            pr = tl.where(keep, pr * (1.0 / (1.0 - p)), 0.0)
        acc = acc * alpha[:, None] + dot(pr.to(v.dtype), v, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, OUT, LSE, CU_Q, CU_K, KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, PREFIX,
    n_heads, n_kv_heads, max_q, max_k, seq_bucket, qk_scale, p, seed,
    HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_REL: tl.constexpr, HAS_PREFIX: tl.constexpr, DROPOUT: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program per (query block, b·Hq + h). seq_bucket only keys the autotune cache."""
    b, h, q0, len_q, k0, len_k = program_sequence(CU_Q, CU_K, n_heads, max_q, max_k, VARLEN)
    prefix = seq_prefix(PREFIX, b, HAS_PREFIX)
    hk = h // (n_heads // n_kv_heads)  # GQA/MQA: query head h reads kv head hk
    m_start = tl.program_id(0) * BLOCK_M
    if m_start >= len_q:
        return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    q_off, q_mask = head_tile(q0, offs_m, len_q, n_heads, h, HEAD_DIM, BLOCK_D)
    q = tl.load(Q + q_off, mask=q_mask, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full_end, end = visible_key_range(m_start, len_q, len_k, prefix, BLOCK_M, BLOCK_N, CAUSAL, HAS_PREFIX)
    # the key blocks every row sees entirely, without masks; then the masked ones
    acc, l_i, m_i = _fwd_key_blocks(
        acc, l_i, m_i, q, K, V, k0, len_k, hk, n_kv_heads, 0, full_end, b, h, offs_m, len_q, qk_scale,
        KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed, prefix,
        False, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, DROPOUT, IEEE, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_key_blocks(
        acc, l_i, m_i, q, K, V, k0, len_k, hk, n_kv_heads, full_end, end, b, h, offs_m, len_q, qk_scale,
        KPM, BIAS, sb_b, sb_h, sb_i, sb_j, LUT, TABLE, n_heads, max_q, max_k, p, seed, prefix,
        True, CAUSAL, HAS_KPM, HAS_BIAS, HAS_REL, HAS_PREFIX, DROPOUT, IEEE, HEAD_DIM, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]  # queries that see no key give zeros
    # base-2 log-sum-exp; +inf for queries without keys, so backward gets P = 0
    lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
    tl.store(OUT + q_off, out.to(OUT.dtype.element_ty), mask=q_mask)
    tl.store(LSE + (q0 + offs_m) * n_heads + h, lse, mask=offs_m < len_q)


def prune_configs(
    configs, args: dict, rows: str, cols: str, accumulators: int, score_tiles: int, mma_sync_operands: int = 0
):
    """The autotune configs that fit the launch. A program keeps a ``rows`` × D block resident,
    with ``accumulators`` such fp32 tiles in registers (accumulators, and operands kept across the
    loop; ``mma_sync_operands`` more before sm_90, where mma.sync holds the resident operands'
    fragments in registers), and streams ``cols`` × D tiles of two operands per pipeline stage;
    each step holds ``score_tiles`` (rows, cols) fp32 tiles (scores, probabilities, their
    gradients), plus about 1.5 more per bias, T5-bias or dropout term. Kept when

      * shared memory, (rows + 2·stages·cols)·D·itemsize, fits the GPU's per-block limit;
      * the fp32 tiles take <= 128 registers per thread on sm_90 (wgmma reads its B operand from
        shared memory), <= 88 before it (mma.sync holds both operands' fragments in registers), so
        the rest of the 255-register budget holds operands and addresses without spilling
        (calibrated against ptxas on the kernel report card);
      * 128-wide blocks of the streamed operand only for D <= 64.

    Never empty: the config with the fewest registers is the last resort."""
    q = args["Q"]
    target = gpu_target(q.device)
    block_d = args["BLOCK_D"]
    extra = 1.5 * (int(args["HAS_BIAS"]) + int(args["HAS_REL"]) + int(args["DROPOUT"]))
    if target is not None and target.arch < 90:
        accumulators += mma_sync_operands

    def registers(c):
        br, bc = c.kwargs[rows], c.kwargs[cols]
        return (accumulators * br * block_d + br * bc * (score_tiles + extra)) / (32 * c.num_warps)

    budget = 128 if target is None or target.arch >= 90 else 88
    kept = []
    for c in configs:
        bc = c.kwargs[cols]
        smem = (c.kwargs[rows] + 2 * c.num_stages * bc) * block_d * q.element_size()
        fits_smem = target is None or smem <= target.smem_per_block
        if fits_smem and registers(c) <= budget and (bc <= 64 or block_d <= 64):
            kept.append(c)
    return kept or [min(configs, key=registers)]


def config_pruner(rows: str, cols: str, accumulators: int, score_tiles: int, mma_sync_operands: int = 0):
    """``early_config_prune`` for triton.autotune (launch arguments arrive as keywords)."""
    return lambda configs, nargs, **kw: prune_configs(
        configs, {**nargs, **kw}, rows, cols, accumulators, score_tiles, mma_sync_operands
    )


# (BLOCK_M, BLOCK_N, num_warps, num_stages): 128-wide key blocks for D <= 64, 8 warps for 128 rows
FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2))
]
AUTOTUNE_KEY = ["HEAD_DIM", "CAUSAL", "HAS_BIAS", "HAS_REL", "HAS_PREFIX", "DROPOUT", "seq_bucket"]

_attention_fwd_tuned = triton.autotune(
    FWD_CONFIGS,
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": config_pruner("BLOCK_M", "BLOCK_N", 1, 1)},
)(_attention_fwd_kernel)


def head_block(head_dim: int) -> int:
    """Tile width for a head dim: a power of two >= 16 (tl.dot's minimum)."""
    return max(16, next_pow2(head_dim))


def seq_bucket(max_k: int) -> int:
    """Power-of-two bucket of the key length, >= 64: the autotune cache key's length term."""
    return max(64, next_pow2(max_k))


def bias_strides(bias4: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Element strides of the (B, H, Tq, Tk) broadcast of a 4-D bias view; 0 on broadcast dims."""
    if bias4 is None:
        return (0, 0, 0, 0)
    return tuple(0 if bias4.shape[i] == 1 else s for i, s in enumerate(bias4.stride()))


def fixed_tiles(q: torch.Tensor, interpreter, fp32):
    """Tiles that bypass autotuning: ``interpreter``'s under the interpreter (small: short Python
    loops), ``fp32``'s for fp32 inputs (exact products on FMA units, no tensor cores: both operands
    in registers, so small tiles); None for 16-bit inputs on a GPU (the autotune set)."""
    if gpu_target(q.device) is None:
        return interpreter
    return fp32 if q.dtype == torch.float32 else None


def launch_tiles(tuned, grid, tiles, **args) -> None:
    """The autotuned kernel (tiles None), or its kernel at tiles (BLOCK_M, BLOCK_N, warps, stages).
    grid: a function of the meta-parameters."""
    if tiles is None:
        launch(tuned, grid, **args)
        return
    bm, bn, warps, stages = tiles
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    launch(tuned.fn, grid(meta), **args, **meta)


def attention_fwd(
    q, k, v, *, batch, max_q, max_k, cu_q, cu_k, causal, kpm, bias4, rel_lut, rel_table, p, seed, scale,
    prefix=None,
):  # fmt: skip
    """Forward launcher.

    Args:
        q: (Nq, Hq, D), k/v: (Nk, Hkv, D) contiguous; padded batches flattened to (B·T, H, D).
        batch: B. max_q, max_k: padded lengths (T for padded input, max_seqlen for varlen).
        cu_q, cu_k: (B + 1,) int32/int64 for varlen, else None.
        kpm: (B, Tk) int8 (1 = attend) or None. bias4: 4-D view broadcastable to (B, Hq, Tq, Tk)
        or None. rel_lut: (max_q + max_k - 1,) int32 bucket of each j - i, rel_table:
        (num_buckets, Hq) — T5 bias, or None. p: dropout prob, seed: Philox seed. scale: softmax.
        prefix: (B,) int32/int64 prefix lengths (prefix LM, with causal) or None.

    Returns:
        o (Nq, Hq, D) like q; lse (Nq, Hq) fp32 in base 2 (+inf for queries that see no key).
    """
    q, k, v, cu_q, cu_k, kpm, rel_lut, rel_table, prefix = contiguous(
        q, k, v, cu_q, cu_k, kpm, rel_lut, rel_table, prefix
    )
    n_q, n_heads, head_dim = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((n_q, n_heads), dtype=torch.float32, device=q.device)
    args = dict(
        Q=q, K=k, V=v, OUT=o, LSE=lse, CU_Q=cu_q, CU_K=cu_k, KPM=kpm, BIAS=bias4,
        **dict(zip(("sb_b", "sb_h", "sb_i", "sb_j"), bias_strides(bias4), strict=True)),
        LUT=rel_lut, TABLE=rel_table, PREFIX=prefix, n_heads=n_heads, n_kv_heads=k.shape[1], max_q=max_q,
        max_k=max_k, seq_bucket=seq_bucket(max_k), qk_scale=scale * LOG2E, p=p, seed=seed,
        HEAD_DIM=head_dim, VARLEN=cu_q is not None, CAUSAL=causal, HAS_KPM=kpm is not None,
        HAS_BIAS=bias4 is not None, HAS_REL=rel_table is not None, HAS_PREFIX=prefix is not None, DROPOUT=p > 0.0,
        IEEE=q.dtype == torch.float32, BLOCK_D=head_block(head_dim),
    )  # fmt: skip
    grid = lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), batch * n_heads)  # noqa: E731
    launch_tiles(_attention_fwd_tuned, grid, fixed_tiles(q, (32, 16, 4, 1), (32, 32, 4, 2)), **args)
    return o, lse
