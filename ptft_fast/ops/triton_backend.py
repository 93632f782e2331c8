"""The ``triton`` backend: autograd wiring of the Triton kernels in ``ptft_fast.kernels``.

Each op is a thin ``torch.autograd.Function`` around the launchers (forward saves what backward
needs; dropout saves only a Philox seed). ``autograd.Function`` rather than
``torch.library.triton_op``: the kernels must also run under ``TRITON_INTERPRET=1`` on CPU (the
CI path), where ``triton_op``'s tracing machinery does not apply; Dynamo traces
``autograd.Function`` with user Triton kernels on GPU. Signatures match ``torch_backend``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptft_fast.kernels._common import draw_seed
from ptft_fast.kernels.attention import attention_fwd
from ptft_fast.kernels.attention_bwd import attention_bwd
from ptft_fast.kernels.cross_entropy import (
    linear_cross_entropy_bwd,
    linear_cross_entropy_fwd,
    pack_labeled_rows,
)
from ptft_fast.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd
from ptft_fast.kernels.lora import lora_bwd, lora_fwd
from ptft_fast.ops.dispatch import register
from ptft_fast.ops.relative_bias import RelativePositionBias

# ----------------------------------------------------------------------------------- layer norm


class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, rms, dropout_p, return_residual):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        r2 = None if residual is None else residual.reshape(-1, shape[-1]).contiguous()
        seed = draw_seed() if dropout_p > 0.0 else 0
        # h must be kept for backward unless it is x itself
        store_h = return_residual or residual is not None or dropout_p > 0.0
        h_dtype = x.dtype if residual is None else torch.result_type(x, residual)
        y, h, mean, rstd = layer_norm_fwd(x2, weight, bias, eps, r2, rms, dropout_p, seed, store_h, h_dtype)
        ctx.save_for_backward(x2 if h is None else h, weight, mean, rstd)
        ctx.meta = (shape, rms, dropout_p, seed, x.dtype, None if residual is None else residual.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.return_residual = return_residual
        y = y.view(shape)
        if return_residual:
            return y, h.view(shape)
        return y

    @staticmethod
    def backward(ctx, dy, *rest):
        shape, rms, dropout_p, seed, x_dtype, res_dtype = ctx.meta
        h, weight, mean, rstd = ctx.saved_tensors
        dh_out = rest[0] if ctx.return_residual and rest[0] is not None else None
        if dh_out is not None:
            dh_out = dh_out.reshape(-1, shape[-1]).contiguous()
        dy2 = dy.reshape(-1, shape[-1]).contiguous()
        dx, dres, dw, db = layer_norm_bwd(
            dy2, h, weight, mean, rstd, dh_out, rms, dropout_p, seed, x_dtype, res_dtype
        )
        dweight = dw.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = None if ctx.bias_dtype is None else db.to(ctx.bias_dtype)
        dres = None if dres is None else dres.view(shape)
        return dx.view(shape), dweight, dbias, dres, None, None, None, None


@register("layer_norm", "triton")
def layer_norm_triton(
    x, weight, bias=None, eps=1e-5, *, residual=None, rms=False, dropout_p=0.0, return_residual=False
):
    """See :func:`ptft_fast.ops.layer_norm`."""
    return _LayerNormFn.apply(x, weight, bias, residual, eps, rms, dropout_p, return_residual)


# ------------------------------------------------------------------------------------ attention


@dataclass(frozen=True)
class _AttnMeta:
    """Non-differentiable launch parameters of one attention call."""

    batch: int
    max_q: int
    max_k: int
    cu_q: torch.Tensor | None
    cu_k: torch.Tensor | None
    causal: bool
    kpm: torch.Tensor | None  # (B, Tk) int8
    rel_lut: torch.Tensor | None  # (max_q + max_k - 1,) int32
    p: float
    seed: int
    scale: float

    def launch_args(self, bias4, rel_table):
        return dict(
            batch=self.batch, max_q=self.max_q, max_k=self.max_k, cu_q=self.cu_q, cu_k=self.cu_k,
            causal=self.causal, kpm=self.kpm, bias4=bias4, rel_lut=self.rel_lut, rel_table=rel_table,
            p=self.p, seed=self.seed, scale=self.scale,
        )  # fmt: skip


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, rel_table, meta):
        # (B, T, H, D) → (B·T, H, D): padded batches are varlen with fixed starts
        q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]).contiguous() for t in (q, k, v))
        bias4 = None if bias is None else bias.view((1,) * (4 - bias.dim()) + tuple(bias.shape))
        table = None if rel_table is None else rel_table.contiguous()
        o, lse = attention_fwd(q3, k3, v3, **meta.launch_args(bias4, table))
        ctx.save_for_backward(q3, k3, v3, o, lse, bias4, table)
        ctx.meta = meta
        ctx.shapes = (q.shape, k.shape, None if bias is None else bias.shape)
        return o.view(q.shape)

    @staticmethod
    def backward(ctx, do):
        q3, k3, v3, o, lse, bias4, table = ctx.saved_tensors
        q_shape, k_shape, bias_shape = ctx.shapes
        bias_grad = bias4 is not None and ctx.needs_input_grad[3]
        rel_grad = table is not None and ctx.needs_input_grad[4]
        do3 = do.reshape(o.shape).contiguous()
        dq, dk, dv, dbias_full, dtable = attention_bwd(
            do3,
            q3,
            k3,
            v3,
            o,
            lse,
            **ctx.meta.launch_args(bias4, table),
            bias_grad=bias_grad,
            rel_grad=rel_grad,
            # torch.use_deterministic_algorithms(True) selects the atomic-free two-pass backward
            deterministic=torch.are_deterministic_algorithms_enabled(),
        )
        dbias = None
        if bias_grad:  # sum the full (B, H, Tq, Tk) gradient over the bias's broadcast dims
            dims = [d for d in range(4) if bias4.shape[d] == 1 and dbias_full.shape[d] != 1]
            dbias = (
                (dbias_full.sum(dims, keepdim=True) if dims else dbias_full)
                .reshape(bias_shape)
                .to(bias4.dtype)
            )
        dtable = None if dtable is None else dtable.to(table.dtype)
        return dq.view(q_shape), dk.view(k_shape), dv.view(k_shape), dbias, dtable, None


@register("attention", "triton")
def attention_triton(
    q,
    k,
    v,
    *,
    causal=False,
    key_padding_mask=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    max_seqlen_q=None,
    max_seqlen_k=None,
    attn_bias=None,
    dropout_p=0.0,
    softmax_scale=None,
):
    """See :func:`ptft_fast.ops.attention`."""
    if cu_seqlens_q is not None:
        batch, max_q, max_k = cu_seqlens_q.numel() - 1, max_seqlen_q, max_seqlen_k
        cu_q, cu_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    else:
        batch, max_q, max_k = q.shape[0], q.shape[1], k.shape[1]
        cu_q = cu_k = None
    rel = attn_bias if isinstance(attn_bias, RelativePositionBias) else None
    meta = _AttnMeta(
        batch=batch,
        max_q=max_q,
        max_k=max_k,
        cu_q=cu_q,
        cu_k=cu_k,
        causal=causal,
        kpm=None if key_padding_mask is None else key_padding_mask.to(torch.int8).contiguous(),
        rel_lut=None if rel is None else rel.bucket_lut(max_q, max_k),
        p=float(dropout_p),
        seed=draw_seed() if dropout_p > 0.0 else 0,
        scale=softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1]),
    )
    dense = None if rel is not None else attn_bias
    return _AttentionFn.apply(q, k, v, dense, None if rel is None else rel.table, meta)


# ------------------------------------------------------------------------- linear cross-entropy


class _LinearCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, smoothing, z_loss, reduction):
        h2 = hidden.reshape(-1, hidden.shape[-1]).contiguous()
        y = labels.reshape(-1).contiguous()
        w = weight.contiguous()
        rows, count = pack_labeled_rows(y, ignore_index)  # on the device: no host sync
        loss, lse = linear_cross_entropy_fwd(h2, w, bias, y, rows, count, smoothing, z_loss)
        ctx.save_for_backward(h2, w, bias, y, rows, count, lse)
        ctx.meta = (smoothing, z_loss, reduction, hidden.shape)
        if reduction == "none":
            return loss.view(labels.shape).to(hidden.dtype)
        total = loss.sum()
        return (total / count[0] if reduction == "mean" else total).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        h2, w, bias, y, rows, count, lse = ctx.saved_tensors
        smoothing, z_loss, reduction, h_shape = ctx.meta
        g = grad_out.float()
        if reduction == "none":
            grad_rows = g.reshape(-1).contiguous()
        else:
            if reduction == "mean":
                g = g / count[0].clamp(min=1)
            grad_rows = g.expand(y.shape).contiguous()
        dh, dw, db = linear_cross_entropy_bwd(h2, w, bias, y, rows, count, lse, grad_rows, smoothing, z_loss)
        return (
            dh.to(h2.dtype).view(h_shape),
            dw.to(w.dtype),
            None if db is None else db.to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )


@register("linear_cross_entropy", "triton")
def linear_cross_entropy_triton(
    hidden, weight, labels, bias=None, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, reduction="mean"
):
    """See :func:`ptft_fast.ops.linear_cross_entropy`."""
    return _LinearCrossEntropyFn.apply(
        hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, reduction
    )


# ----------------------------------------------------------------------------------------- LoRA


class _LoraLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, dropout_p):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        seed = draw_seed() if dropout_p > 0.0 else 0
        y, t = lora_fwd(x2, weight, bias, lora_a, lora_b, scaling, dropout_p, seed)
        ctx.save_for_backward(x2, t, weight, lora_a, lora_b)
        ctx.meta = (shape, scaling, dropout_p, seed)
        return y.view(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, t, weight, lora_a, lora_b = ctx.saved_tensors
        shape, scaling, dropout_p, seed = ctx.meta
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        dx, dla, dlb = lora_bwd(dy2, x2, t, weight, lora_a, lora_b, scaling, dropout_p, seed)
        # the base weight is normally frozen; its grads only when asked for
        dw = (dy2.t() @ x2).to(weight.dtype) if ctx.needs_input_grad[1] else None
        db = dy2.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return dx.view(shape), dw, db, dla, dlb, None, None


@register("lora_linear", "triton")
def lora_linear_triton(x, weight, bias, lora_a, lora_b, scaling, *, dropout_p=0.0):
    """See :func:`ptft_fast.ops.lora_linear`."""
    return _LoraLinearFn.apply(x, weight, bias, lora_a, lora_b, scaling, dropout_p)
