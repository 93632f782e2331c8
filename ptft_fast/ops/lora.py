"""Public op: LoRA linear, x Wᵀ + b + scaling · (dropout(x) Aᵀ) Bᵀ."""

from __future__ import annotations

import math

import torch

from ptft_fast.ops import checks
from ptft_fast.ops.dispatch import resolve

OP = "lora_linear"


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    *,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Frozen linear layer plus a scaled low-rank update (LoRA).

    Args:
        x: (..., in) activations.
        weight: (out, in) frozen base weight.
        bias: (out,) or None.
        lora_a: (r, in) down projection A.
        lora_b: (out, r) up projection B.
        scaling: s = alpha / r (finite).
        dropout_p: dropout on the input of the low-rank path only, in [0, 1).
        backend: "auto" | "torch" | "triton" | "cuda"; None → current default.

    Returns:
        (..., out) in x's dtype. Gradients flow to x, lora_a, lora_b (and weight/bias if they
        require grad).

    Dtypes (docs/op_contracts.md): under autocast every input is cast first; then weight, lora_a
    and lora_b have x's dtype, bias has it or float32 when x is float16/bfloat16.
    """
    checks.tensor(OP, "x", x)
    checks.not_empty(OP, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{OP}: x must have at least 1 dim (..., in), got a scalar")
    checks.tensor(OP, "weight", weight, ndim=2)
    checks.tensor(OP, "lora_a", lora_a, ndim=2)
    checks.tensor(OP, "lora_b", lora_b, ndim=2)
    out_f, in_f = weight.shape
    a_shape = lora_a.shape
    if in_f != x.shape[-1]:
        checks.size(OP, "weight", weight, 1, x.shape[-1], "x.shape[-1] (in_features)")
    if a_shape[1] != in_f:
        checks.size(OP, "lora_a", lora_a, 1, in_f, "weight.shape[1] (in_features)")
    if lora_b.shape != (out_f, a_shape[0]):
        checks.size(OP, "lora_b", lora_b, 0, out_f, "weight.shape[0] (out_features)")
        checks.size(OP, "lora_b", lora_b, 1, a_shape[0], "lora_a.shape[0] (rank r)")
    if a_shape[0] == 0:
        raise ValueError(f"{OP}: rank r = lora_a.shape[0] must be >= 1, got shape {tuple(a_shape)}")
    if bias is not None:
        checks.tensor(OP, "bias", bias, ndim=1)
        checks.shape(OP, "bias", bias, (out_f,), "weight.shape[0]")
    device = x.device
    if (
        weight.device != device
        or lora_a.device != device
        or lora_b.device != device
        or (bias is not None and bias.device != device)
    ):
        checks.same_device(OP, "x", x, weight=weight, bias=bias, lora_a=lora_a, lora_b=lora_b)
    kind = checks.device_type(x)
    if torch.is_autocast_enabled(kind):
        x, weight, bias, lora_a, lora_b = checks.autocast_inputs(kind, x, weight, bias, lora_a, lora_b)
    dtype = x.dtype
    if (
        weight.dtype != dtype
        or lora_a.dtype != dtype
        or lora_b.dtype != dtype
        or (bias is not None and bias.dtype != dtype)
    ):
        checks.dtypes(
            OP, "x", x, operands={"weight": weight, "lora_a": lora_a, "lora_b": lora_b}, params={"bias": bias}
        )
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not math.isfinite(scaling):
        raise ValueError(f"{OP}: scaling must be a finite number, got {scaling!r}")
    checks.probability(OP, "dropout_p", dropout_p)
    impl = resolve(OP, backend, x)
    return impl(x, weight, bias, lora_a, lora_b, float(scaling), dropout_p=dropout_p)
