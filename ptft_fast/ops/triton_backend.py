"""The ``triton`` backend: autograd wiring of the Triton kernels in ``ptft_fast.kernels``.

Each op is a thin ``torch.autograd.Function`` around the launchers (forward saves what backward
needs; dropout saves only a Philox seed). ``autograd.Function`` rather than
``torch.library.triton_op``: the kernels must also run under ``TRITON_INTERPRET=1`` on CPU (the
CI path), where ``triton_op``'s tracing machinery does not apply; Dynamo traces
``autograd.Function`` with user Triton kernels on GPU. Signatures match ``torch_backend``.
"""

from __future__ import annotations

import torch

from ptft_fast.kernels._common import draw_seed
from ptft_fast.kernels.layer_norm import layer_norm_bwd, layer_norm_fwd
from ptft_fast.ops.dispatch import register

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
