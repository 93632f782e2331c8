"""peft LoRA ``Linear`` layers on ``ops.lora_linear``.

Each peft ``lora.Linear`` keeps its class, parameters and adapter bookkeeping (so ``set_adapter``,
``merge_adapter``, ``merge_and_unload``, ``save_pretrained`` and loading in plain peft are
peft's own); only its ``forward`` is replaced, on the instance, by one that reads the layer's
live state on every call and, in the case LoRA training runs — adapters enabled and unmerged,
exactly one active adapter, plain LoRA (no DoRA or other variant), no extra call arguments,
input and weights of one dtype (or autocast) — computes

    y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ   (+ s · b_B with ``lora_bias``)

with one ``ops.lora_linear`` call on the layer's own tensors (W from the base ``nn.Linear``, or
transposed from a transformers ``Conv1D``; A, B from ``lora_A``/``lora_B``; s from ``scaling``;
the dropout probability from ``lora_dropout`` while training). Every other case runs peft's
forward unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import MethodType

import torch
from torch import nn

from ptft_fast import ops


def _lora_linear_class():
    """peft's LoRA Linear class, or None when peft was never imported (then no model has one)."""
    if "peft" not in sys.modules:
        return None
    from peft.tuners.lora.layer import Linear

    return Linear


def is_peft_layer(module: nn.Module) -> bool:
    """A peft tuner layer (its adapter weights live under it)."""
    return "peft" in sys.modules and hasattr(type(module), "adapter_layer_names")


def _base_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight as (out, in)."""
    return base.weight if type(base) is nn.Linear else base.weight.t()  # Conv1D stores (in, out)


def _static_refusal(layer: nn.Module) -> str | None:
    from transformers.pytorch_utils import Conv1D

    if type(layer.base_layer) not in (nn.Linear, Conv1D):
        return f"base layer is a {type(layer.base_layer).__name__} (fused: nn.Linear, Conv1D)"
    return None


def _fast_adapter(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one adapter the fused op can compute this call with, or None (→ peft's forward)."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    lora_a, lora_b, drop = layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
    if name in layer.lora_variant or type(lora_a) is not nn.Linear or type(lora_b) is not nn.Linear:
        return None
    if lora_a.bias is not None or type(drop) not in (nn.Dropout, nn.Identity):
        return None
    scaling = layer.scaling[name]
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        return None
    dtypes = {x.dtype, layer.base_layer.weight.dtype, lora_a.weight.dtype, lora_b.weight.dtype}
    if len(dtypes) != 1 and not torch.is_autocast_enabled(x.device.type):
        return None
    return name


def _make_forward(backend: str | None):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x: (..., in) → (..., out); peft's forward unless :func:`_fast_adapter` finds the fused case."""
        name = _fast_adapter(self, x, args, kwargs)
        if name is None:
            return type(self).forward(self, x, *args, **kwargs)
        base, lora_b, drop = self.base_layer, self.lora_B[name], self.lora_dropout[name]
        scaling = self.scaling[name]
        bias = base.bias
        if lora_b.bias is not None:  # lora_bias=True: B has a bias, scaled with the update
            bias = scaling * lora_b.bias if bias is None else bias + scaling * lora_b.bias
        p = drop.p if isinstance(drop, nn.Dropout) and drop.training else 0.0
        return ops.lora_linear(
            x,
            _base_weight(base),
            bias,
            self.lora_A[name].weight,
            lora_b.weight,
            scaling,
            dropout_p=p,
            backend=backend,
        )

    return forward


def install(root: nn.Module, backend: str | None) -> tuple[list[str], list[str], Callable[[], None]]:
    """Route every peft LoRA Linear under ``root`` to ``ops.lora_linear``.

    Returns (names routed, [why each other LoRA layer was left alone], undo).
    """
    linear_cls = _lora_linear_class()
    routed, left, layers = [], [], []
    if linear_cls is not None:
        forward = _make_forward(backend)
        for name, module in root.named_modules():
            if not isinstance(module, linear_cls):
                if is_peft_layer(module) and "lora" in type(module).__module__:
                    left.append(f"lora {name} ({type(module).__name__}): not a peft lora.Linear")
                continue
            if type(module) is not linear_cls:
                left.append(
                    f"lora {name} ({type(module).__name__}): a subclass of lora.Linear with its own forward"
                )
                continue
            why = _static_refusal(module)
            if why is not None:
                left.append(f"lora {name}: {why}")
                continue
            if module.lora_variant:
                variants = ", ".join(f"{a} ({type(v).__name__})" for a, v in module.lora_variant.items())
                left.append(f"lora {name}: adapters with a LoRA variant run on peft's forward: {variants}")
            module.forward = MethodType(forward, module)
            layers.append(module)
            routed.append(name)

    def undo() -> None:
        for module in layers:
            del module.forward

    return routed, left, undo
