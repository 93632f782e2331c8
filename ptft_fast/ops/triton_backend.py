"""The ``triton`` backend: the Triton kernels of ``ptft_fast.kernels`` as ``torch.library`` ops.

Each op is a ``torch.library.custom_op`` pair (``ptft_triton::<op>_fwd`` / ``_bwd``) with
``register_fake`` shapes and ``register_autograd`` wiring, so ``torch.compile`` keeps them as
opaque nodes instead of tracing into the launchers. ``custom_op`` rather than ``triton_op``:
``triton_op`` lets Inductor see the kernels, but its tracing does not run under
``TRITON_INTERPRET=1`` (the CPU CI path), while ``custom_op`` behaves the same on GPU and in the
interpreter. Dropout draws a Philox seed inside the forward op (from torch's CPU generator, so
``torch.manual_seed`` reproduces it) and returns it as a CPU int64 tensor; backward regenerates
the mask from it. Public signatures match ``torch_backend``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ptft_fast.kernels._common import draw_seed
from ptft_fast.kernels.attention import attention_fwd
from ptft_fast.kernels.attention_bwd import attention_bwd
from ptft_fast.kernels.cross_entropy import (
    linear_cross_entropy_bwd,
    linear_cross_entropy_fwd,
    pack_labeled_rows,
)
from ptft_fast.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd
from ptft_fast.kernels.lora import lora_linear_bwd, lora_linear_fwd
from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.cross_entropy import check_labels_in_range
from ptft_fast.ops.dispatch import register
from ptft_fast.ops.relative_bias import RelativePositionBias
from ptft_fast.ops.schema_grads import SchemaGrads

MAX_HEAD_DIM = 256
_NS = "ptft_triton"


_NO_SEED = torch.zeros(1, dtype=torch.int64)


def _seed_tensor(p: float) -> Tensor:
    """The Philox seed, (1,) int64 on CPU: drawn per call when dropping; without dropout one shared
    zero, never read nor written (no tensor built per call: ~2 µs of host time each)."""
    return torch.tensor([draw_seed()], dtype=torch.int64) if p > 0.0 else _NO_SEED


def _empty(like: Tensor) -> Tensor:
    """A (0,) placeholder for an output that this call does not produce."""
    return like.new_empty((0,))


# ----------------------------------------------------------------------------------- layer norm


@torch.library.custom_op(f"{_NS}::layer_norm_fwd", mutates_args=())
def _ln_fwd(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None,
    eps: float, rms: bool, dropout_p: float, store_h: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """x, residual: (M, H); returns y (M, H), h (M, H) or (0,), mean, rstd (M,), seed (1,)."""
    seed = _seed_tensor(dropout_p)
    h_dtype = x.dtype if residual is None else torch.result_type(x, residual)
    y, h, mean, rstd = layer_norm_fwd(
        x.contiguous(), weight, bias, eps, None if residual is None else residual.contiguous(),
        rms, dropout_p, int(seed), store_h, h_dtype,
    )  # fmt: skip
    return y, _empty(x) if h is None else h, mean, rstd, seed


@_ln_fwd.register_fake
def _(x, weight, bias, residual, eps, rms, dropout_p, store_h):
    h_dtype = x.dtype if residual is None else torch.result_type(x, residual)
    h = x.new_empty(x.shape, dtype=h_dtype) if store_h else _empty(x)
    stats = x.new_empty(x.shape[0], dtype=torch.float32)
    return torch.empty_like(x), h, stats, torch.empty_like(stats), torch.empty(1, dtype=torch.int64)


@torch.library.custom_op(f"{_NS}::layer_norm_bwd", mutates_args=())
def _ln_bwd(
    dy: Tensor, h: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, dh_out: Tensor | None,
    seed: Tensor, rms: bool, dropout_p: float, x_dtype: torch.dtype, res_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns dx (M, H), dresidual (M, H) or (0,), dweight, dbias (H,) fp32."""
    dx, dres, dw, db = layer_norm_bwd(
        dy.contiguous(), h, weight, mean, rstd, None if dh_out is None else dh_out.contiguous(),
        rms, dropout_p, int(seed), x_dtype, res_dtype,
    )  # fmt: skip
    return dx, _empty(dy) if dres is None else dres, dw, db


@_ln_bwd.register_fake
def _(dy, h, weight, mean, rstd, dh_out, seed, rms, dropout_p, x_dtype, res_dtype):
    dres = _empty(dy) if res_dtype is None else dy.new_empty(dy.shape, dtype=res_dtype)
    dw = dy.new_empty(dy.shape[1], dtype=torch.float32)
    return dy.new_empty(dy.shape, dtype=x_dtype), dres, dw, torch.empty_like(dw)


def _ln_setup(ctx, inputs, output):
    x, weight, bias, residual, _eps, rms, dropout_p, store_h = inputs
    _, h, mean, rstd, seed = output
    ctx.save_for_backward(h if store_h else x, weight, mean, rstd, seed)
    res_dtype = None if residual is None else residual.dtype
    ctx.meta = (rms, dropout_p, x.dtype, res_dtype, None if bias is None else bias.dtype)


def _ln_backward(ctx, dy, dh_out, *_):
    h, weight, mean, rstd, seed = ctx.saved_tensors
    rms, dropout_p, x_dtype, res_dtype, bias_dtype = ctx.meta
    if dh_out is not None and dh_out.numel() != dy.numel():  # the (0,) placeholder h: no grad
        dh_out = None
    dx, dres, dw, db = _ln_bwd(dy, h, weight, mean, rstd, dh_out, seed, rms, dropout_p, x_dtype, res_dtype)
    return _LN_GRADS(
        x=dx,
        weight=dw.to(weight.dtype) if weight is not None else None,
        bias=db.to(bias_dtype) if bias_dtype is not None else None,
        residual=dres if res_dtype is not None else None,
    )


_LN_GRADS = SchemaGrads(f"{_NS}::layer_norm_fwd")
torch.library.register_autograd(f"{_NS}::layer_norm_fwd", _ln_backward, setup_context=_ln_setup)


@register("layer_norm", "triton")
def layer_norm_triton(
    x, weight, bias=None, eps=1e-5, *, residual=None, rms=False, dropout_p=0.0, return_residual=False
):
    """See :func:`ptft_fast.ops.layer_norm`."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    r2 = None if residual is None else residual.reshape(-1, shape[-1])
    # h is kept for backward unless it is x itself
    store_h = return_residual or residual is not None or dropout_p > 0.0
    y, h, *_ = _ln_fwd(x2, weight, bias, r2, float(eps), bool(rms), float(dropout_p), store_h)
    y = y.view(shape)
    return (y, h.view(shape)) if return_residual else y


# ------------------------------------------------------------------------------------ attention


def _bias4(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.view((1,) * (4 - bias.dim()) + tuple(bias.shape))


@torch.library.custom_op(f"{_NS}::attention_fwd", mutates_args=())
def _attn_fwd(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, rel_table: Tensor | None, rel_lut: Tensor | None,
    cu_q: Tensor | None, cu_k: Tensor | None, kpm: Tensor | None, prefix: Tensor | None,
    batch: int, max_q: int, max_k: int, causal: bool, p: float, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """q: (Nq, Hq, D), k/v: (Nk, Hkv, D) (padded batches flattened); prefix: (B,) prefix lengths.
    Returns o like q, lse (Nq, Hq) fp32, seed (1,) int64 on CPU."""
    seed = _seed_tensor(p)
    o, lse = attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(),
        batch=batch, max_q=max_q, max_k=max_k, cu_q=cu_q, cu_k=cu_k, causal=causal, kpm=kpm,
        bias4=_bias4(bias), rel_lut=rel_lut, rel_table=None if rel_table is None else rel_table.contiguous(),
        p=p, seed=int(seed), scale=scale, prefix=prefix,
    )  # fmt: skip
    return o, lse, seed


@_attn_fwd.register_fake
def _(q, k, v, bias, rel_table, rel_lut, cu_q, cu_k, kpm, prefix, batch, max_q, max_k, causal, p, scale):
    lse = q.new_empty(q.shape[:2], dtype=torch.float32)
    return torch.empty_like(q), lse, torch.empty(1, dtype=torch.int64)


@torch.library.custom_op(f"{_NS}::attention_bwd", mutates_args=())
def _attn_bwd(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, seed: Tensor,
    bias: Tensor | None, rel_table: Tensor | None, rel_lut: Tensor | None,
    cu_q: Tensor | None, cu_k: Tensor | None, kpm: Tensor | None, prefix: Tensor | None,
    batch: int, max_q: int, max_k: int, causal: bool, p: float, scale: float,
    bias_grad: bool, rel_grad: bool, deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns dq, dk, dv, dbias (bias's shape and dtype, or (0,)), dtable (or (0,))."""
    bias4 = _bias4(bias)
    table = None if rel_table is None else rel_table.contiguous()
    dq, dk, dv, dbias_full, dtable = attention_bwd(
        do.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), o, lse,
        batch=batch, max_q=max_q, max_k=max_k, cu_q=cu_q, cu_k=cu_k, causal=causal, kpm=kpm,
        bias4=bias4, rel_lut=rel_lut, rel_table=table, p=p, seed=int(seed), scale=scale,
        bias_grad=bias_grad, rel_grad=rel_grad, deterministic=deterministic, prefix=prefix,
    )  # fmt: skip
    dbias = _empty(q)
    if bias_grad:  # sum the full (B, H, Tq, Tk) gradient over the bias's broadcast dims
        dims = [d for d in range(4) if bias4.shape[d] == 1 and dbias_full.shape[d] != 1]
        dbias = (
            (dbias_full.sum(dims, keepdim=True) if dims else dbias_full).reshape(bias.shape).to(bias.dtype)
        )
    dtable = _empty(q) if dtable is None else dtable.to(rel_table.dtype)
    return dq, dk, dv, dbias, dtable


@_attn_bwd.register_fake
def _(do, q, k, v, o, lse, seed, bias, rel_table, *rest):
    bias_grad, rel_grad = rest[-3], rest[-2]
    dbias = torch.empty_like(bias) if bias_grad else _empty(q)
    dtable = torch.empty_like(rel_table) if rel_grad else _empty(q)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dbias, dtable


_ATTN_TENSORS = 5  # rel_lut, cu_q, cu_k, kpm, prefix: the tensors after rel_table (saved for backward)


def _attn_setup(ctx, inputs, output):
    q, k, v, bias, rel_table, *meta = inputs
    o, lse, seed = output
    ctx.save_for_backward(q, k, v, o, lse, seed, bias, rel_table, *meta[:_ATTN_TENSORS])
    ctx.meta = tuple(meta[_ATTN_TENSORS:])


def _attn_backward(ctx, do, *_):
    q, k, v, o, lse, seed, bias, rel_table, *tensors = ctx.saved_tensors
    bias_grad = bias is not None and _ATTN_GRADS.needed(ctx, "bias")
    rel_grad = rel_table is not None and _ATTN_GRADS.needed(ctx, "rel_table")
    # torch.use_deterministic_algorithms(True) selects the atomic-free two-pass backward
    deterministic = torch.are_deterministic_algorithms_enabled()
    dq, dk, dv, dbias, dtable = _attn_bwd(
        do, q, k, v, o, lse, seed, bias, rel_table, *tensors, *ctx.meta, bias_grad, rel_grad, deterministic
    )
    return _ATTN_GRADS(
        q=dq, k=dk, v=dv, bias=dbias if bias_grad else None, rel_table=dtable if rel_grad else None
    )


_ATTN_GRADS = SchemaGrads(f"{_NS}::attention_fwd")
torch.library.register_autograd(f"{_NS}::attention_fwd", _attn_backward, setup_context=_attn_setup)


@register("attention", "triton")
def attention_triton(q: Tensor, k: Tensor, v: Tensor, args: AttentionArgs) -> Tensor:
    """See :func:`ptft_fast.ops.attention`; ``args`` as the public op checked them."""
    if q.shape[-1] > MAX_HEAD_DIM:  # one (BLOCK, D) tile per operand must fit on chip
        raise ValueError(
            f"attention: the triton backend supports head dim D <= {MAX_HEAD_DIM}, got D={q.shape[-1]}"
        )
    batch, max_q, max_k = args.batch_and_lengths(q, k)
    bias = args.attn_bias
    rel = bias if isinstance(bias, RelativePositionBias) else None
    kpm = None if args.key_padding_mask is None else args.key_padding_mask.to(torch.int8)
    # (B, T, H, D) → (B·T, H, D): padded batches are varlen with fixed starts
    q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
    o, _, _ = _attn_fwd(
        q3, k3, v3,
        None if rel is not None else bias,
        None if rel is None else rel.table,
        None if rel is None else rel.bucket_lut(max_q, max_k),
        args.cu_seqlens_q, args.cu_seqlens_k, kpm, args.prefix_lengths, batch, max_q, max_k, bool(args.causal),
        float(args.dropout_p), args.scale(q.shape[-1]),
    )  # fmt: skip
    return o.view(q.shape)


# ------------------------------------------------------------------------- linear cross-entropy


@torch.library.custom_op(f"{_NS}::linear_cross_entropy_fwd", mutates_args=())
def _linear_cross_entropy_fwd(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, ignore_index: int, smoothing: float,
    z_loss: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """hidden: (N, H), labels: (N,). Returns per-row loss (N,) fp32 (0 where ignored), lse (N,),
    the packed labeled rows (N + 1,) int32 and their count (1,) int32 — all on the device."""
    labels = labels.contiguous()
    rows, count = pack_labeled_rows(labels, ignore_index)
    loss, lse = linear_cross_entropy_fwd(
        hidden.contiguous(), weight.contiguous(), bias, labels, rows, count, smoothing, z_loss
    )
    return loss, lse, rows, count


@_linear_cross_entropy_fwd.register_fake
def _(hidden, weight, bias, labels, ignore_index, smoothing, z_loss):
    n = hidden.shape[0]
    loss = hidden.new_empty(n, dtype=torch.float32)
    rows = hidden.new_empty(n + 1, dtype=torch.int32)
    return loss, torch.empty_like(loss), rows, hidden.new_empty(1, dtype=torch.int32)


@torch.library.custom_op(f"{_NS}::linear_cross_entropy_bwd", mutates_args=())
def _linear_cross_entropy_bwd(
    grad_rows: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, rows: Tensor,
    count: Tensor, lse: Tensor, smoothing: float, z_loss: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients of sum(grad_rows · loss): dh like hidden, dW like weight, db like bias or (0,)."""
    dh, dw, db = linear_cross_entropy_bwd(
        hidden.contiguous(), weight.contiguous(), bias, labels.contiguous(), rows, count, lse,
        grad_rows.float().contiguous(), smoothing, z_loss,
    )  # fmt: skip
    db = _empty(hidden) if db is None else db.to(bias.dtype)
    return dh.to(hidden.dtype), dw.to(weight.dtype), db


@_linear_cross_entropy_bwd.register_fake
def _(grad_rows, hidden, weight, bias, labels, rows, count, lse, smoothing, z_loss):
    db = _empty(hidden) if bias is None else torch.empty_like(bias)
    return torch.empty_like(hidden), torch.empty_like(weight), db


def _linear_cross_entropy_setup(ctx, inputs, output):
    hidden, weight, bias, labels, _ignore, smoothing, z_loss = inputs
    _, lse, rows, count = output
    ctx.save_for_backward(hidden, weight, bias, labels, rows, count, lse)
    ctx.meta = (smoothing, z_loss)


def _linear_cross_entropy_backward(ctx, dloss, *_):
    hidden, weight, bias, labels, rows, count, lse = ctx.saved_tensors
    dh, dw, db = _linear_cross_entropy_bwd(dloss, hidden, weight, bias, labels, rows, count, lse, *ctx.meta)
    return _LINEAR_CROSS_ENTROPY_GRADS(hidden=dh, weight=dw, bias=db if bias is not None else None)


_LINEAR_CROSS_ENTROPY_GRADS = SchemaGrads(f"{_NS}::linear_cross_entropy_fwd")
torch.library.register_autograd(
    f"{_NS}::linear_cross_entropy_fwd",
    _linear_cross_entropy_backward,
    setup_context=_linear_cross_entropy_setup,
)


@register("linear_cross_entropy", "triton")
def linear_cross_entropy_triton(
    hidden, weight, labels, bias=None, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, reduction="mean",
    loss_dtype=None,
):  # fmt: skip
    """See :func:`ptft_fast.ops.linear_cross_entropy`."""
    if labels.is_cpu:  # the interpreter (the public op checks device labels)
        check_labels_in_range(labels, weight.shape[0], ignore_index)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    loss, _, _, count = _linear_cross_entropy_fwd(
        h2, weight, bias, labels.reshape(-1), int(ignore_index), float(label_smoothing), float(z_loss)
    )
    # the reduction is plain torch: autograd hands each row its share of the gradient
    if reduction == "none":
        return loss.view(labels.shape).to(loss_dtype or hidden.dtype)
    total = loss.sum()
    return (total / count[0] if reduction == "mean" else total).to(loss_dtype or hidden.dtype)


# ----------------------------------------------------------------------------------------- LoRA


@torch.library.custom_op(f"{_NS}::lora_linear_fwd", mutates_args=())
def _lora_linear_fwd(
    x: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor, lora_b: Tensor, scaling: float, p: float
) -> tuple[Tensor, Tensor, Tensor]:
    """x: (M, in). Returns y (M, out), t = dropout(x) Aᵀ (M, r), seed (1,) int64 on CPU."""
    seed = _seed_tensor(p)
    y, t = lora_linear_fwd(x.contiguous(), weight, bias, lora_a, lora_b, scaling, p, int(seed))
    return y, t, seed


@_lora_linear_fwd.register_fake
def _(x, weight, bias, lora_a, lora_b, scaling, p):
    y = x.new_empty((x.shape[0], weight.shape[0]))
    return y, x.new_empty((x.shape[0], lora_a.shape[0])), torch.empty(1, dtype=torch.int64)


@torch.library.custom_op(f"{_NS}::lora_linear_bwd", mutates_args=())
def _lora_linear_bwd(
    dy: Tensor, x: Tensor, t: Tensor, seed: Tensor, weight: Tensor, lora_a: Tensor, lora_b: Tensor,
    scaling: float, p: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Returns dx like x, dA like lora_a, dB like lora_b."""
    return lora_linear_bwd(dy.contiguous(), x.contiguous(), t, weight, lora_a, lora_b, scaling, p, int(seed))


@_lora_linear_bwd.register_fake
def _(dy, x, t, seed, weight, lora_a, lora_b, scaling, p):
    return torch.empty_like(x), torch.empty_like(lora_a), torch.empty_like(lora_b)


def _lora_linear_setup(ctx, inputs, output):
    x, weight, _bias, lora_a, lora_b, scaling, p = inputs
    _, t, seed = output
    ctx.save_for_backward(x, t, seed, weight, lora_a, lora_b)
    ctx.meta = (scaling, p)
    ctx.bias_dtype = None if _bias is None else _bias.dtype


def _lora_linear_backward(ctx, dy, *_):
    x, t, seed, weight, lora_a, lora_b = ctx.saved_tensors
    dx, dla, dlb = _lora_linear_bwd(dy, x, t, seed, weight, lora_a, lora_b, *ctx.meta)
    # the base weight is normally frozen; its grads only when asked for
    dw = (dy.t() @ x.to(dy.dtype)).to(weight.dtype) if _LORA_LINEAR_GRADS.needed(ctx, "weight") else None
    db = dy.sum(0).to(ctx.bias_dtype) if _LORA_LINEAR_GRADS.needed(ctx, "bias") else None
    return _LORA_LINEAR_GRADS(x=dx, weight=dw, bias=db, lora_a=dla, lora_b=dlb)


_LORA_LINEAR_GRADS = SchemaGrads(f"{_NS}::lora_linear_fwd")
torch.library.register_autograd(
    f"{_NS}::lora_linear_fwd", _lora_linear_backward, setup_context=_lora_linear_setup
)


@register("lora_linear", "triton")
def lora_linear_triton(x, weight, bias, lora_a, lora_b, scaling, *, dropout_p=0.0):
    """See :func:`ptft_fast.ops.lora_linear`."""
    shape = x.shape
    y, _, _ = _lora_linear_fwd(
        x.reshape(-1, shape[-1]), weight, bias, lora_a, lora_b, float(scaling), float(dropout_p)
    )
    return y.view(*shape[:-1], weight.shape[0])
