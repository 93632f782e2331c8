"""The ``cuda`` backend: the CUDA C++ kernels of ``ptft_fast._C`` (csrc/) as ``torch.ops.ptft_fast``.

The op schemas and their CUDA implementations are declared once in ``csrc/binding.cpp``; this
module adds what Python owns — autograd (``torch.library.register_autograd``), fake/meta
implementations so ``torch.compile`` traces the ops (``torch.library.register_fake``), and the
public-signature wrappers registered with the dispatcher. All of that runs only when
``ptft_fast._C`` imports. The argument adaptation (2-D views, dtype rules, what the kernels do
not support) is plain Python above it and is tested on CPU.

What the kernels do not support raises a ``TypeError``/``ValueError`` naming the argument — never
a silent fallback: attention and linear_cross_entropy / lora_linear run in float16/bfloat16 only
(tensor cores), attention head dims are 32, 64 and 128, layer norm rows are at most 32768 wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.relative_bias import RelativePositionBias
from ptft_fast.ops.schema_grads import SchemaGrads

try:
    from ptft_fast import _C
except ImportError:  # not built here: the dispatcher reports why when backend="cuda" is asked for
    _C = None

HALF_DTYPES = (torch.float16, torch.bfloat16)
LAYER_NORM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYER_NORM_MAX_HIDDEN = 32768  # csrc/layer_norm.cu: one fp32 row in shared memory
ATTENTION_HEAD_DIMS = (32, 64, 128)
ATTENTION_MAX_BUCKETS = 256  # csrc/attention_common.cuh: T5 buckets looked up in-kernel
REDUCTIONS = ("none", "sum", "mean")


def _where(op: str) -> str:
    return f"{op} (cuda backend)"


def _require_half(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in HALF_DTYPES:
        raise TypeError(
            f"{_where(op)}: {name} must be float16 or bfloat16 (tensor-core kernels), got {t.dtype}; "
            "use backend='triton' or 'torch' for other dtypes"
        )


def draw_rng(device: torch.device) -> torch.Tensor:
    """{seed, offset} for the kernels' Philox dropout, drawn on ``device`` from torch's generator
    (reproducible under ``torch.manual_seed``, no host sync)."""
    return torch.empty(2, dtype=torch.int64, device=device).random_()


# ------------------------------------------------------------------------ argument adaptation


@dataclass(frozen=True)
class LayerNormArgs:
    x: torch.Tensor  # (rows, H) contiguous
    weight: torch.Tensor | None  # (H,) in x's dtype or float32
    bias: torch.Tensor | None
    residual: torch.Tensor | None  # (rows, H) like x


def adapt_layer_norm(x, weight, bias, residual) -> LayerNormArgs:
    """2-D contiguous views; weight and bias share one dtype: x's, or float32 if either differs."""
    op = "layer_norm"
    if x.dtype not in LAYER_NORM_DTYPES:
        raise TypeError(f"{_where(op)}: x must be float32, float16 or bfloat16, got {x.dtype}")
    hidden = x.shape[-1]
    if hidden > LAYER_NORM_MAX_HIDDEN:
        raise ValueError(f"{_where(op)}: x.shape[-1] must be <= {LAYER_NORM_MAX_HIDDEN}, got {hidden}")
    if residual is not None and residual.dtype != x.dtype:
        raise TypeError(
            f"{_where(op)}: residual must have x's dtype {x.dtype}, got {residual.dtype} "
            "(the kernel rounds h = dropout(x) + residual in x's dtype)"
        )
    params = [p for p in (weight, bias) if p is not None]
    pdt = x.dtype if all(p.dtype == x.dtype for p in params) else torch.float32
    w = None if weight is None else weight.to(pdt).contiguous()
    b = None if bias is None else bias.to(pdt).contiguous()
    x2 = x.reshape(-1, hidden).contiguous()
    r2 = None if residual is None else residual.reshape(-1, hidden).contiguous()
    return LayerNormArgs(x2, w, b, r2)


@dataclass(frozen=True)
class AttentionOperands:
    """The kernels' operands of one attention call (``AttentionArgs`` adapted to csrc's rules)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor | None  # int32
    cu_seqlens_k: torch.Tensor | None
    key_padding_mask: torch.Tensor | None
    attn_bias: torch.Tensor | None  # in q's dtype, broadcastable to (B, Hq, Tq, Tk)
    rel_lut: torch.Tensor | None  # T5 bias in-kernel: (Tq + Tk - 1,) int32 bucket of j - i + Tq - 1
    rel_table: torch.Tensor | None  # (num_buckets, Hq) float32 (differentiable)
    prefix_lengths: torch.Tensor | None  # (B,) int32, prefix LM
    max_seqlen_q: int
    max_seqlen_k: int
    softmax_scale: float


def adapt_attention(q, k, v, args: AttentionArgs) -> AttentionOperands:
    """Contiguous q/k/v (16-byte aligned), int32 cu_seqlens and prefix lengths, a dense bias in
    q's dtype; a T5 RelativePositionBias goes to the kernels as its bucket table (looked up
    in-kernel) when it has at most ATTENTION_MAX_BUCKETS buckets, else materialized."""
    op = "attention"
    _require_half(op, "q", q)
    head_dim = q.shape[-1]
    if head_dim not in ATTENTION_HEAD_DIMS:
        raise ValueError(
            f"{_where(op)}: head dim D = q.shape[-1] must be one of {ATTENTION_HEAD_DIMS}, got {head_dim}; "
            "use backend='triton' or 'torch' for other head dims"
        )
    attn_bias, prefix_lengths = args.attn_bias, args.prefix_lengths
    if args.varlen:
        tq, tk = int(args.max_seqlen_q), int(args.max_seqlen_k)
        cu_q = args.cu_seqlens_q.to(torch.int32).contiguous()
        cu_k = args.cu_seqlens_k.to(torch.int32).contiguous()
        if q.device.type == "cuda":  # the public op checks this on the host only for CPU tensors
            for name, cu, longest in (("max_seqlen_q", cu_q, tq), ("max_seqlen_k", cu_k, tk)):
                ok = (cu[1:] - cu[:-1]).max() <= longest
                torch._assert_async(
                    ok, f"{_where(op)}: {name}={longest} is smaller than the longest sequence"
                )
    else:
        tq, tk = q.shape[1], k.shape[1]
        cu_q = cu_k = None
    rel_lut = rel_table = None
    if isinstance(attn_bias, RelativePositionBias):  # grad flows to the table either way
        if attn_bias.num_buckets <= ATTENTION_MAX_BUCKETS:
            rel_lut = attn_bias.bucket_lut(tq, tk).to(q.device)
            rel_table = attn_bias.table.to(q.device, torch.float32).contiguous()
            attn_bias = None
        else:
            attn_bias = attn_bias.materialize(tq, tk)
    if attn_bias is not None:  # contiguous: the binding broadcasts it with zero strides, as a view
        attn_bias = attn_bias.to(q.dtype).contiguous()
    mask = None if args.key_padding_mask is None else args.key_padding_mask.contiguous()
    prefix = None if prefix_lengths is None else prefix_lengths.to(torch.int32).contiguous()
    scale = args.scale(head_dim)
    q, k, v = (_aligned16(t.contiguous()) for t in (q, k, v))
    return AttentionOperands(q, k, v, cu_q, cu_k, mask, attn_bias, rel_lut, rel_table, prefix, tq, tk, scale)


def _aligned16(t: torch.Tensor) -> torch.Tensor:
    """t itself, or a copy when its data does not start on a 16-byte boundary (the kernels copy
    16-byte chunks): storages are allocated aligned, so the storage offset decides (which, unlike
    data_ptr(), torch.compile can trace)."""
    return t if t.storage_offset() * t.element_size() % 16 == 0 else t.clone()


@dataclass(frozen=True)
class CrossEntropyArgs:
    hidden: torch.Tensor  # (N, H) contiguous
    weight: torch.Tensor  # (V, H) contiguous
    labels: torch.Tensor  # (N,) int64
    bias: torch.Tensor | None  # (V,) in hidden's dtype


def adapt_linear_cross_entropy(hidden, weight, labels, bias, reduction) -> CrossEntropyArgs:
    op = "linear_cross_entropy"
    _require_half(op, "hidden", hidden)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{_where(op)}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    h2 = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    y = labels.reshape(-1).to(torch.int64).contiguous()
    b = None if bias is None else bias.to(hidden.dtype).contiguous()
    return CrossEntropyArgs(h2, weight.to(hidden.dtype).contiguous(), y, b)


@dataclass(frozen=True)
class LoraLinearArgs:
    x: torch.Tensor  # (M, in) contiguous
    weight: torch.Tensor  # (out, in), all in x's dtype
    bias: torch.Tensor | None
    lora_a: torch.Tensor  # (r, in)
    lora_b: torch.Tensor  # (out, r)


def adapt_lora_linear(x, weight, bias, lora_a, lora_b) -> LoraLinearArgs:
    """2-D x; every parameter cast to x's dtype (differentiably: grads return in their own dtype)."""
    _require_half("lora_linear", "x", x)

    def cast(t):
        return None if t is None else t.to(x.dtype).contiguous()

    return LoraLinearArgs(
        x.reshape(-1, x.shape[-1]).contiguous(), cast(weight), cast(bias), cast(lora_a), cast(lora_b)
    )


# ------------------------------------------------------------------------------- registration


_F32, _I32 = torch.float32, torch.int32


def _register_layer_norm() -> None:
    @torch.library.register_fake("ptft_fast::layer_norm_fwd")
    def _(x, weight, bias, residual, rng, eps, rms, dropout_p, store_h):
        rows = x.shape[0]
        h = torch.empty_like(x) if store_h else x.new_empty(0)
        return torch.empty_like(x), h, x.new_empty(rows, dtype=_F32), x.new_empty(rows, dtype=_F32)

    @torch.library.register_fake("ptft_fast::layer_norm_bwd")
    def _(dy, dh, h, weight, bias, mean, rstd, rng, rms, dropout_p, has_residual):
        return (
            torch.empty_like(h),
            torch.empty_like(h) if has_residual else h.new_empty(0),
            torch.empty_like(weight) if weight is not None else h.new_empty(0),
            torch.empty_like(bias) if bias is not None else h.new_empty(0),
        )

    grads = SchemaGrads("ptft_fast::layer_norm_fwd")

    def setup(ctx, inputs, output):
        x, weight, bias, residual, rng, _eps, rms, dropout_p, store_h = inputs
        _y, h, mean, rstd = output
        ctx.save_for_backward(h if store_h else x, weight, bias, mean, rstd, rng)
        ctx.meta = (rms, dropout_p, residual is not None, store_h)

    def backward(ctx, dy, dh, _dmean, _drstd):
        hx, weight, bias, mean, rstd, rng = ctx.saved_tensors
        rms, dropout_p, has_res, store_h = ctx.meta
        dy = torch.zeros_like(hx) if dy is None else dy.contiguous()
        dh = dh.contiguous() if store_h and dh is not None and dh.numel() else None
        dx, dres, dw, db = torch.ops.ptft_fast.layer_norm_bwd(
            dy, dh, hx, weight, bias, mean, rstd, rng, rms, dropout_p, has_res
        )
        return grads(
            x=dx,
            weight=dw if weight is not None else None,
            bias=db if bias is not None else None,
            residual=dres if has_res else None,
        )

    torch.library.register_autograd("ptft_fast::layer_norm_fwd", backward, setup_context=setup)


def _register_attention() -> None:
    @torch.library.register_fake("ptft_fast::attention_fwd")
    def _(
        q, k, v, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng, max_q, max_k, causal, dropout_p, scale
    ):  # fmt: skip
        batch = q.shape[0] if cu_q is None else cu_q.shape[0] - 1
        return torch.empty_like(q), q.new_empty((batch, q.shape[-2], max_q), dtype=_F32)

    @torch.library.register_fake("ptft_fast::attention_bwd")
    def _(
        dout, q, k, v, out, lse, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng,
        max_q, max_k, causal, dropout_p, scale, bias_grad, rel_grad,
    ):  # fmt: skip
        dbias = torch.empty_like(bias) if bias_grad else q.new_empty(0)
        drel = torch.empty_like(rel_table) if rel_grad else q.new_empty(0, dtype=_F32)
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias, drel

    grads = SchemaGrads("ptft_fast::attention_fwd")

    def setup(ctx, inputs, output):
        q, k, v, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng, *meta = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng)
        ctx.meta = tuple(meta)  # max_q, max_k, causal, dropout_p, scale
        ctx.bias_grad = bias is not None and grads.needed(ctx, "attn_bias")
        ctx.rel_grad = rel_table is not None and grads.needed(ctx, "rel_table")

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng = ctx.saved_tensors
        dq, dk, dv, dbias, drel = torch.ops.ptft_fast.attention_bwd(
            dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, kpm, bias, rel_lut, rel_table, prefix, rng,
            *ctx.meta, ctx.bias_grad, ctx.rel_grad,
        )  # fmt: skip
        return grads(
            q=dq,
            k=dk,
            v=dv,
            attn_bias=dbias if ctx.bias_grad else None,
            rel_table=drel if ctx.rel_grad else None,
        )

    torch.library.register_autograd("ptft_fast::attention_fwd", backward, setup_context=setup)


def _register_linear_cross_entropy() -> None:
    @torch.library.register_fake("ptft_fast::linear_cross_entropy_fwd")
    def _(hidden, weight, labels, bias, ignore_index, label_smoothing, z_loss, reduction):
        n = hidden.shape[0]
        loss = hidden.new_empty(n, dtype=_F32) if reduction == "none" else hidden.new_empty((), dtype=_F32)
        return (
            loss,
            hidden.new_empty(n, dtype=_F32),
            hidden.new_empty(n, dtype=_I32),
            hidden.new_empty(1, dtype=_I32),
        )

    @torch.library.register_fake("ptft_fast::linear_cross_entropy_bwd")
    def _(grad, hidden, weight, labels, bias, lse, rows, count, label_smoothing, z_loss, reduction):
        db = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
        return torch.empty_like(hidden), torch.empty_like(weight), db

    grads = SchemaGrads("ptft_fast::linear_cross_entropy_fwd")

    def setup(ctx, inputs, output):
        hidden, weight, labels, bias, _ignore, label_smoothing, z_loss, reduction = inputs
        _loss, lse, rows, count = output
        ctx.save_for_backward(hidden, weight, labels, bias, lse, rows, count)
        ctx.meta = (label_smoothing, z_loss, reduction)

    def backward(ctx, dloss, _dlse, _drows, _dcount):
        hidden, weight, labels, bias, lse, rows, count = ctx.saved_tensors
        dh, dw, db = torch.ops.ptft_fast.linear_cross_entropy_bwd(
            dloss.float().contiguous(), hidden, weight, labels, bias, lse, rows, count, *ctx.meta
        )
        return grads(hidden=dh, weight=dw, bias=db if bias is not None else None)

    torch.library.register_autograd("ptft_fast::linear_cross_entropy_fwd", backward, setup_context=setup)


def _register_lora_linear() -> None:
    @torch.library.register_fake("ptft_fast::lora_linear_fwd")
    def _(x, weight, bias, lora_a, lora_b, rng, scaling, dropout_p):
        # u: (2, M, r), the low-rank activation as a 16-bit hi + lo pair
        return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((2, x.shape[0], lora_a.shape[0]))

    @torch.library.register_fake("ptft_fast::lora_linear_bwd")
    def _(dy, x, weight, lora_a, lora_b, u, rng, scaling, dropout_p, weight_grad, bias_grad):
        dw = torch.empty_like(weight) if weight_grad else x.new_empty(0)
        db = x.new_empty(weight.shape[0]) if bias_grad else x.new_empty(0)
        return torch.empty_like(x), dw, db, torch.empty_like(lora_a), torch.empty_like(lora_b)

    grads = SchemaGrads("ptft_fast::lora_linear_fwd")

    def setup(ctx, inputs, output):
        x, weight, bias, lora_a, lora_b, rng, scaling, dropout_p = inputs
        _y, u = output
        ctx.save_for_backward(x, weight, lora_a, lora_b, u, rng)
        ctx.meta = (scaling, dropout_p)
        ctx.grads = (grads.needed(ctx, "weight"), bias is not None and grads.needed(ctx, "bias"))

    def backward(ctx, dy, _du):
        x, weight, lora_a, lora_b, u, rng = ctx.saved_tensors
        wg, bg = ctx.grads
        dx, dw, db, da, dbm = torch.ops.ptft_fast.lora_linear_bwd(
            dy.contiguous(), x, weight, lora_a, lora_b, u, rng, *ctx.meta, wg, bg
        )
        return grads(x=dx, weight=dw if wg else None, bias=db if bg else None, lora_a=da, lora_b=dbm)

    torch.library.register_autograd("ptft_fast::lora_linear_fwd", backward, setup_context=setup)


def _register_library() -> None:
    """Autograd and fake implementations of the torch.ops.ptft_fast ops declared in csrc, per op."""
    _register_layer_norm()
    _register_attention()
    _register_linear_cross_entropy()
    _register_lora_linear()


# ------------------------------------------------------------------------ public-signature ops


def layer_norm_cuda(
    x, weight, bias=None, eps=1e-5, *, residual=None, rms=False, dropout_p=0.0, return_residual=False
):
    if residual is not None and residual.dtype == torch.float32 and x.dtype != torch.float32:
        # op contract: an fp32 residual stream next to half x; the kernel adds in x's dtype, so it
        # runs in fp32 here (h stays fp32) and y comes back in x's dtype
        out = layer_norm_cuda(x.float(), weight, bias, eps, residual=residual, rms=rms,
                              dropout_p=dropout_p, return_residual=return_residual)  # fmt: skip
        return (out[0].to(x.dtype), out[1]) if return_residual else out.to(x.dtype)
    a = adapt_layer_norm(x, weight, bias, residual)
    rng = draw_rng(x.device) if dropout_p > 0.0 else None
    store_h = return_residual or residual is not None or dropout_p > 0.0  # backward needs h unless h is x
    y, h, _, _ = torch.ops.ptft_fast.layer_norm_fwd(
        a.x, a.weight, a.bias, a.residual, rng, float(eps), bool(rms), float(dropout_p), store_h
    )
    y = y.view(x.shape)
    return (y, h.view(x.shape)) if return_residual else y


def attention_cuda(q, k, v, args: AttentionArgs):
    a = adapt_attention(q, k, v, args)
    dropout_p = float(args.dropout_p)
    rng = draw_rng(q.device) if dropout_p > 0.0 else None
    out, _ = torch.ops.ptft_fast.attention_fwd(
        a.q,
        a.k,
        a.v,
        a.cu_seqlens_q,
        a.cu_seqlens_k,
        a.key_padding_mask,
        a.attn_bias,
        a.rel_lut,
        a.rel_table,
        a.prefix_lengths,
        rng,
        a.max_seqlen_q,
        a.max_seqlen_k,
        bool(args.causal),
        dropout_p,
        a.softmax_scale,
    )
    return out


def linear_cross_entropy_cuda(
    hidden, weight, labels, bias=None, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, reduction="mean",
    loss_dtype=None,
):  # fmt: skip
    a = adapt_linear_cross_entropy(hidden, weight, labels, bias, reduction)
    loss, _, _, _ = torch.ops.ptft_fast.linear_cross_entropy_fwd(
        a.hidden,
        a.weight,
        a.labels,
        a.bias,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        reduction,
    )
    if reduction == "none":
        loss = loss.view(labels.shape)
    return loss.to(loss_dtype or hidden.dtype)


def lora_linear_cuda(x, weight, bias, lora_a, lora_b, scaling, *, dropout_p=0.0):
    a = adapt_lora_linear(x, weight, bias, lora_a, lora_b)
    rng = draw_rng(x.device) if dropout_p > 0.0 else None
    y, _ = torch.ops.ptft_fast.lora_linear_fwd(
        a.x, a.weight, a.bias, a.lora_a, a.lora_b, rng, float(scaling), float(dropout_p)
    )
    return y.view(*x.shape[:-1], weight.shape[0])


if _C is not None:
    from ptft_fast.ops.dispatch import register

    _register_library()
    register("layer_norm", "cuda")(layer_norm_cuda)
    register("attention", "cuda")(attention_cuda)
    register("linear_cross_entropy", "cuda")(linear_cross_entropy_cuda)
    register("lora_linear", "cuda")(lora_linear_cuda)
