"""Find a transformers model's norms by what they compute, and swap them for ptft_fast's.

Every family names its norm class differently (``LlamaRMSNorm``, ``T5LayerNorm``,
``GemmaRMSNorm``, ...), so a module is recognised by its parameters and behaviour instead: a
leaf module with no buffers whose parameters are a 1-D ``weight`` (H,) and optionally a ``bias``
(H,), with an epsilon attribute, and whose forward on random inputs (a float32 copy, random
weights, two input scales so that eps shows) matches one of

- LayerNorm: (x - mean) / sqrt(var + eps) · w + b
- RMSNorm: x / sqrt(mean(x²) + eps) · w
- offset RMSNorm (Gemma): x / sqrt(mean(x²) + eps) · (1 + w)

within 1e-5. The replacement shares the original parameters (the state dict is unchanged); a
candidate that matches nothing is left alone and reported.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from ptft_fast import ops
from ptft_fast.nn import LayerNorm, RMSNorm

EPS_NAMES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps", "norm_eps")
PROBE_TOL = 1e-5


class OffsetRMSNorm(RMSNorm):
    """RMSNorm scaled by (offset + weight), as Gemma stores its norm weights (offset 1).

    Computed by ``ops.layer_norm(x, offset + weight, rms=True)``; exact in float32 (Gemma forms
    1 + w in float32 as well). Parameters and state dict as the module it replaces.
    """

    def __init__(self, normalized_shape, eps: float | None = None, offset: float = 1.0, **kwargs) -> None:
        super().__init__(normalized_shape, eps, **kwargs)
        self.offset = offset

    @classmethod
    def from_weight(
        cls, weight: nn.Parameter, eps: float | None, *, offset: float = 1.0, backend: str | None = None
    ) -> OffsetRMSNorm:
        new = cls(tuple(weight.shape), eps, offset, device="meta", backend=backend)
        new.weight = weight  # share, do not copy
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", offset={self.offset}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input: (..., H) → (..., H) like input."""
        eps = torch.finfo(input.dtype).eps if self.eps is None else self.eps
        scale = self.weight.float() + self.offset
        return ops.layer_norm(input, scale, None, eps, rms=True, backend=self.backend)


def _eps_of(module: nn.Module) -> float | None:
    for name in EPS_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, float) and value > 0:
            return value
    return None


def _single_input(module: nn.Module) -> bool:
    """forward takes exactly one required argument (the hidden states)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return len(required) == 1


def candidate(module: nn.Module) -> bool:
    """A leaf module with a (H,) weight, optional (H,) bias, nothing else: worth probing."""
    if next(module.children(), None) is not None or next(module.buffers(recurse=False), None) is not None:
        return False
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    if weight is None or weight.dim() != 1 or set(params) - {"weight", "bias"}:
        return False
    bias = params.get("bias")
    return bias is None or tuple(bias.shape) == tuple(weight.shape)


def _expected(
    kind: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, eps: float
) -> torch.Tensor:
    x = x.double()
    if kind == "layer_norm":
        y = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        return y * w.double() + (0.0 if b is None else b.double())
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * (w.double() + (1.0 if kind == "offset_rms" else 0.0))


def recognise(module: nn.Module) -> tuple[str | None, str]:
    """(kind, why): kind is "layer_norm" | "rms" | "offset_rms", or None with the reason."""
    eps = _eps_of(module)
    if eps is None and not isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return None, "no epsilon attribute (" + "/".join(EPS_NAMES) + ")"
    if not _single_input(module):
        return None, "forward takes more than the hidden states"
    if any(p.device.type == "meta" for p in module.parameters()):
        return None, "parameters on the meta device (not loaded)"
    probe = copy.deepcopy(module).to(device="cpu", dtype=torch.float32)
    if isinstance(probe, nn.RMSNorm) and probe.eps is None:
        eps = torch.finfo(torch.float32).eps
    elif isinstance(probe, (nn.LayerNorm, nn.RMSNorm)):
        eps = probe.eps
    gen = torch.Generator().manual_seed(0)
    hidden = probe.weight.shape[0]
    with torch.no_grad():
        probe.weight.copy_(torch.randn(hidden, generator=gen))
        bias = getattr(probe, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.copy_(torch.randn(hidden, generator=gen))
        else:
            bias = None
        x = torch.randn(4, hidden, generator=gen) + 0.5  # non-zero mean: LayerNorm ≠ RMSNorm
        try:
            outs = [(scale, probe(x * scale)) for scale in (1.0, 1e-3)]  # small inputs: eps matters
        except Exception as exc:  # a module that is not a norm may reject the probe
            return None, f"forward failed on a (4, {hidden}) probe: {type(exc).__name__}"
    for kind in ("layer_norm",) if bias is not None else ("rms", "offset_rms", "layer_norm"):
        if all(
            isinstance(y, torch.Tensor)
            and y.shape == x.shape
            and torch.allclose(
                y.double(), _expected(kind, x * s, probe.weight, bias, eps), atol=PROBE_TOL, rtol=PROBE_TOL
            )
            for s, y in outs
        ):
            return kind, ""
    return None, f"behaves like no LayerNorm/RMSNorm form with eps={eps:g}"


def replacement(module: nn.Module, kind: str, backend: str | None) -> nn.Module:
    """The ptft_fast module computing ``kind`` with ``module``'s parameters (shared)."""
    eps = module.eps if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) else _eps_of(module)
    if kind == "offset_rms":
        return OffsetRMSNorm.from_weight(module.weight, eps, backend=backend)
    if kind == "rms":
        return RMSNorm.from_weight(module.weight, eps, backend=backend)
    if isinstance(module, nn.LayerNorm):
        return LayerNorm.from_torch(module, backend=backend)
    bias = getattr(module, "bias", None)
    new = LayerNorm(tuple(module.weight.shape), eps, bias=bias is not None, device="meta", backend=backend)
    new.weight, new.bias = module.weight, bias  # share, do not copy
    return new


def swap(model: nn.Module, backend: str | None, skip=lambda module: False) -> tuple[dict, dict, list[str]]:
    """Replace every recognised norm under ``model``, except inside modules for which ``skip`` holds.

    Returns ({name: original module}, {name: kind}, [why each other candidate was left alone]).
    """
    originals, kinds, left, skipped = {}, {}, [], []
    for name, module in list(model.named_modules()):
        if any(name.startswith(s + ".") for s in skipped):
            continue
        if skip(module):
            skipped.append(name)
            continue
        if not name or isinstance(module, (LayerNorm, RMSNorm)) or not candidate(module):
            continue
        kind, why = recognise(module)
        if kind is None:
            left.append(f"norm {name} ({type(module).__name__}): {why}")
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, replacement(module, kind, backend))
        originals[name], kinds[name] = module, kind
    return originals, kinds, left


def restore(model: nn.Module, originals: dict) -> None:
    """Put the original norm modules back (inverse of :func:`swap`)."""
    for name, module in originals.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, module)
