"""Public op: layer norm / RMS norm with fused residual add and dropout."""

from __future__ import annotations

import torch

from ptft_fast.ops import checks
from ptft_fast.ops.dispatch import resolve

OP = "layer_norm"


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual: torch.Tensor | None = None,
    rms: bool = False,
    dropout_p: float = 0.0,
    return_residual: bool = False,
    backend: str | None = None,
):
    """Normalize the last dim of ``dropout(x) + residual``; LayerNorm, or RMSNorm with ``rms=True``.

    Args:
        x: (..., H) activations.
        weight: (H,) scale, or None for no affine scale.
        bias: (H,) shift, or None.
        eps: added to the variance (mean square for RMS); finite, > 0.
        residual: (..., H) like x, or None. With it, computes norm(dropout(x) + residual), the
            pre-norm/post-norm block pattern.
        rms: RMSNorm (no mean subtraction) instead of LayerNorm.
        dropout_p: dropout probability on x before the residual add, in [0, 1).
        return_residual: also return h = dropout(x) + residual (the residual stream).
        backend: "auto" | "torch" | "triton" | "cuda"; None → current default.

    Returns:
        y: (..., H) in x's dtype; or (y, h) with ``return_residual`` (h in the wider dtype of x
        and residual).

    Dtypes (docs/op_contracts.md): weight, bias and residual have x's dtype, or float32 when x is
    float16/bfloat16; any other mix is a TypeError naming the argument.
    """
    checks.tensor(OP, "x", x)
    checks.not_empty(OP, "x", x)
    x_shape = x.shape
    if not x_shape:
        raise ValueError(f"{OP}: x must have at least 1 dim (..., H), got a scalar")
    hidden = (x_shape[-1],)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            checks.tensor(OP, name, t, ndim=1)
            checks.shape(OP, name, t, hidden, "x.shape[-1]")
    if residual is not None:
        checks.tensor(OP, "residual", residual)
        checks.shape(OP, "residual", residual, x_shape, "x.shape")
    device = x.device
    if (
        (weight is not None and weight.device != device)
        or (bias is not None and bias.device != device)
        or (residual is not None and residual.device != device)
    ):
        checks.same_device(OP, "x", x, weight=weight, bias=bias, residual=residual)
    checks.dtypes(OP, "x", x, operands={}, params={"weight": weight, "bias": bias, "residual": residual})
    checks.positive(OP, "eps", eps)
    checks.probability(OP, "dropout_p", dropout_p)
    impl = resolve(OP, backend, x)
    return impl(
        x,
        weight,
        bias,
        eps,
        residual=residual,
        rms=bool(rms),
        dropout_p=dropout_p,
        return_residual=bool(return_residual),
    )
