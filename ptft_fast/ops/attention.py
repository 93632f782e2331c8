"""Public op: scaled dot-product attention (padded or varlen, causal, bias, dropout, GQA)."""

from __future__ import annotations

import math

import torch

from ptft_fast.ops import checks
from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.dispatch import resolve
from ptft_fast.ops.relative_bias import RelativePositionBias

OP = "attention"


def _check_relative_bias(bias: RelativePositionBias, n_heads: int) -> None:
    checks.tensor(OP, "attn_bias.table", bias.table, ndim=2)
    for name in ("num_buckets", "max_distance"):
        value = getattr(bias, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{OP}: attn_bias.{name} must be an int >= 2, got {value!r}")
    expected = (bias.num_buckets, n_heads)
    checks.shape(OP, "attn_bias.table", bias.table, expected, "(num_buckets, Hq)")


def _check_bias(bias, full: tuple[int, int, int, int]) -> None:
    if isinstance(bias, RelativePositionBias):
        _check_relative_bias(bias, full[1])
        return
    checks.tensor(OP, "attn_bias", bias)
    ok = bias.dim() <= 4 and all(b in (1, f) for b, f in zip(bias.shape[::-1], full[::-1], strict=False))
    if not ok:
        raise ValueError(
            f"{OP}: attn_bias must broadcast to (B, Hq, Tq, Tk) = {full}, got {tuple(bias.shape)}"
        )


def _check_prefix(prefix: torch.Tensor, causal: bool, batch: int, q: torch.Tensor, op: str = OP) -> None:
    """prefix_lengths: (B,) integer tensor on q's device, with causal attention (no host read)."""
    if not causal:
        raise ValueError(
            f"{op}: prefix_lengths makes causal attention bidirectional over a prefix; it needs causal=True"
        )
    checks.tensor(op, "prefix_lengths", prefix, ndim=1, floating=False)
    if prefix.dtype not in checks.INDEX_DTYPES:
        raise TypeError(f"{op}: prefix_lengths must be int32 or int64, got {prefix.dtype}")
    checks.shape(op, "prefix_lengths", prefix, (batch,), "one per sequence")
    checks.same_device(op, "q", q, prefix_lengths=prefix)


def _check_max_seqlen(name: str, value, cu: torch.Tensor) -> int:
    if value is None:  # derive it (a host read; pass it to avoid the sync on GPU)
        return int((cu[1:] - cu[:-1]).max().item())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{OP}: {name} must be a positive int, got {value!r}")
    if cu.device.type == "cpu":
        longest = int((cu[1:] - cu[:-1]).max())
        if longest > value:
            raise ValueError(f"{OP}: {name}={value} is smaller than the longest sequence ({longest})")
    return value


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    prefix_lengths: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + attn_bias + mask) v, FlashAttention conventions.

    Args:
        q: (B, Tq, Hq, D), or packed (total_q, Hq, D) with cu_seqlens_q.
        k, v: (B, Tk, Hkv, D), or packed (total_k, Hkv, D); Hq % Hkv == 0 (GQA/MQA).
        causal: query i attends key j iff j <= i + (Tk - Tq) (aligned bottom-right, per
            sequence in varlen form; equal lengths give the usual lower triangle).
        key_padding_mask: (B, Tk) bool, True = attend. Padded form only.
        cu_seqlens_q, cu_seqlens_k: (B + 1,) int32/int64 prefix sums of sequence lengths; give
            both for the varlen form.
        max_seqlen_q, max_seqlen_k: longest sequence; derived (a host read) when None.
        attn_bias: additive, differentiable, broadcastable to (B, Hq, Tq, Tk) (T5 relative
            position bias, ALiBi); in varlen form Tq/Tk are max_seqlen_q/k. Or a
            :class:`~ptft_fast.ops.relative_bias.RelativePositionBias` (T5): the triton and cuda
            backends look it up in-kernel (gradient into its table), the torch backend materializes it.
        dropout_p: attention-probability dropout, in [0, 1).
        softmax_scale: default 1/sqrt(D).
        prefix_lengths: (B,) int32/int64, one per sequence (batch row, or cu_seqlens sequence in
            varlen form), with ``causal=True`` only: prefix-LM attention. Query i also sees every
            key j < prefix_lengths[b] (key positions), so the first prefix_lengths[b] keys are
            attended bidirectionally and the rest causally. Values <= 0 mean no prefix.
        backend: "auto" | "torch" | "triton" | "cuda"; None → current default.

    Returns:
        Like q: (B, Tq, Hq, D) or (total_q, Hq, D). Queries that see no key return zeros.

    Dtypes (docs/op_contracts.md): under autocast q, k, v are cast first; then k and v have q's
    dtype, attn_bias (or its table) has it or float32 when q is float16/bfloat16.
    """
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    ndim = 3 if varlen else 4
    for name, t in (("q", q), ("k", k), ("v", v)):
        checks.tensor(OP, name, t)
        if t.dim() != ndim:
            layout = "(total, H, D) in varlen form" if varlen else "(B, T, H, D)"
            raise ValueError(f"{OP}: {name} must be {layout}, got shape {tuple(t.shape)}")
        checks.not_empty(OP, name, t)
    device = q.device
    if k.device != device or v.device != device:
        checks.same_device(OP, "q", q, k=k, v=v)
    kind = checks.device_type(q)
    if torch.is_autocast_enabled(kind):
        q, k, v = checks.autocast_inputs(kind, q, k, v)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        checks.dtypes(OP, "q", q, operands={"k": k, "v": v}, params={})
    q_shape, k_shape = q.shape, k.shape  # read once: each .shape builds a new object
    if k_shape != v.shape:
        raise ValueError(f"{OP}: k and v must have the same shape, got {tuple(k_shape)} and {tuple(v.shape)}")
    if q_shape[-1] != k_shape[-1]:
        raise ValueError(f"{OP}: head dim D of q ({q_shape[-1]}) and k ({k_shape[-1]}) must match")
    hq, hkv = q_shape[-2], k_shape[-2]
    if hq % hkv != 0:
        raise ValueError(f"{OP}: Hq must be divisible by Hkv (GQA/MQA), got Hq={hq}, Hkv={hkv}")
    checks.probability(OP, "dropout_p", dropout_p)
    if softmax_scale is not None:
        checks.positive(OP, "softmax_scale", softmax_scale)

    if varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise ValueError(f"{OP}: varlen form needs both cu_seqlens_q and cu_seqlens_k")
        if key_padding_mask is not None:
            raise ValueError(
                f"{OP}: key_padding_mask is for the padded form; varlen lengths come from cu_seqlens"
            )
        bq = checks.cu_seqlens(OP, "cu_seqlens_q", cu_seqlens_q, q.shape[0], q)
        bk = checks.cu_seqlens(OP, "cu_seqlens_k", cu_seqlens_k, k.shape[0], q)
        if bq != bk:
            raise ValueError(
                f"{OP}: cu_seqlens_q ({bq} sequences) and cu_seqlens_k ({bk}) must describe one batch"
            )
        max_seqlen_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q, cu_seqlens_q)
        max_seqlen_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k, cu_seqlens_k)
        full = (bq, hq, max_seqlen_q, max_seqlen_k)
    else:
        if q_shape[0] != k_shape[0]:
            raise ValueError(f"{OP}: batch of q ({q_shape[0]}) and k ({k_shape[0]}) must match")
        full = (q_shape[0], hq, q_shape[1], k_shape[1])
        if key_padding_mask is not None:
            checks.tensor(OP, "key_padding_mask", key_padding_mask, floating=False)
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(
                    f"{OP}: key_padding_mask must be bool (True = attend), got {key_padding_mask.dtype}"
                )
            checks.shape(OP, "key_padding_mask", key_padding_mask, (k_shape[0], k_shape[1]), "(B, Tk)")
            checks.same_device(OP, "q", q, key_padding_mask=key_padding_mask)
    if prefix_lengths is not None:
        _check_prefix(prefix_lengths, bool(causal), full[0], q)
    if attn_bias is not None:
        _check_bias(attn_bias, full)
        relative = isinstance(attn_bias, RelativePositionBias)
        bias_tensor = attn_bias.table if relative else attn_bias
        checks.same_device(OP, "q", q, attn_bias=bias_tensor)
        if bias_tensor.dtype != q.dtype:
            checks.dtypes(
                OP, "q", q, operands={}, params={"attn_bias.table" if relative else "attn_bias": bias_tensor}
            )
    impl = resolve(OP, backend, q)
    args = AttentionArgs(
        causal=bool(causal),
        key_padding_mask=key_padding_mask,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        attn_bias=attn_bias,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale if softmax_scale is None else float(softmax_scale),
        prefix_lengths=prefix_lengths,
    )
    return impl(q, k, v, args)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_bias: torch.Tensor | RelativePositionBias | None = None,
    softmax_scale: float | None = None,
    prefix_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention probabilities :func:`attention` applies to v, for inspection (which heads
    attend where): softmax(q kᵀ · scale + attn_bias + mask), before dropout, in float32.

    Same conventions as :func:`attention`, padded form only: q (B, Tq, Hq, D), k (B, Tk, Hkv, D),
    key_padding_mask (B, Tk) bool True = attend, causal aligned bottom-right, prefix_lengths (B,)
    as in :func:`attention`. Returns
    (B, Hq, Tq, Tk); each row sums to 1, or is zeros for a query that sees no key. Always the
    PyTorch reference (the fused kernels never materialize the probabilities).
    """
    from ptft_fast.ops.reference import attention_weights_ref

    for name, t in (("q", q), ("k", k)):
        checks.tensor(OP, name, t)
        if t.dim() != 4:
            raise ValueError(f"attention_weights: {name} must be (B, T, H, D), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1] or q.shape[0] != k.shape[0] or q.shape[-2] % k.shape[-2]:
        raise ValueError(
            f"attention_weights: q {tuple(q.shape)} and k {tuple(k.shape)} must share B and D, Hq % Hkv == 0"
        )
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (k.shape[0], k.shape[1])
    ):
        raise ValueError(
            f"attention_weights: key_padding_mask must be bool (B, Tk) = {(k.shape[0], k.shape[1])}, "
            f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    if prefix_lengths is not None:
        _check_prefix(prefix_lengths, causal, q.shape[0], q, "attention_weights")
    return attention_weights_ref(
        q,
        k,
        causal=causal,
        key_padding_mask=key_padding_mask,
        attn_bias=attn_bias,
        softmax_scale=softmax_scale,
        prefix_lengths=prefix_lengths,
    )


def default_scale(head_dim: int) -> float:
    """The softmax scale used when none is given: 1 / sqrt(D)."""
    return 1.0 / math.sqrt(head_dim)
