"""LoRA on any model: replace matching ``nn.Linear`` modules by ``nn.LoRALinear`` (ops.lora_linear)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ptft_fast.nn import LoRALinear
from ptft_fast.peft.core import matches, replace_module

# Default targets for the ptft_fast model core (fused qkv projection + attention output).
PTFT_DEFAULT_TARGETS = ("qkv", "q", "kv", "out")


@dataclass
class LoraConfig:
    r: int = 8  # rank of the update
    alpha: float = 16.0  # update scale = alpha / r
    dropout: float = 0.0  # dropout on the low-rank path's input
    target_modules: str | list[str] = field(default_factory=lambda: list(PTFT_DEFAULT_TARGETS))
    # regex (full match) or list of module-name suffixes, as in peft

    def to_dict(self) -> dict:
        return {"peft_type": "lora", **asdict(self)}


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap every ``nn.Linear`` whose name matches; returns the wrapped names (raises if none).

    Base weights are shared with the wrapper (no copy) and frozen.
    """
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and n and matches(n, config.target_modules)
    ]
    if not names:
        raise ValueError(f"apply_lora: target_modules={config.target_modules!r} matched no nn.Linear")
    for n in names:
        lin = model.get_submodule(n)
        replace_module(model, n, LoRALinear.from_linear(lin, config.r, config.alpha, config.dropout))
    return names


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_and_unload_lora(model: nn.Module) -> int:
    """Replace every LoRA linear by a plain ``nn.Linear`` with the update folded in (W + s·BA);
    returns how many. The model then has the base architecture's parameters only."""
    modules = lora_modules(model)
    for name, m in modules:
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        lin = lin.to(device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(m.weight if m.merged else m.weight + m.delta_weight())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        replace_module(model, name, lin)
    return len(modules)


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight (W += s·BA)."""
    for _, m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged update out again (exact inverse in fp32/fp64: the same rounded delta)."""
    for _, m in lora_modules(model):
        m.unmerge()


@torch.no_grad()
def merge_drift(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """What merging into ``dtype`` weights costs: per LoRA module, max |round(W + s·BA) − (W + s·BA)|
    relative to max |s·BA| (fp32 math). Does not modify the model.

    Returns {module name: relative drift} plus "max" over modules. A value near 1 means the
    update is mostly lost to rounding (it is small next to W's ulp).
    """
    out: dict[str, float] = {}
    for n, m in lora_modules(model):
        if m.merged:
            raise RuntimeError(f"merge_drift: {n} is already merged")
        delta = (m.lora_B.float() @ m.lora_A.float()) * m.scaling
        exact = m.weight.float() + delta
        merged = (m.weight.to(dtype).float() + delta).to(dtype).float()  # merge into a `dtype` copy
        scale = delta.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        out[n] = float((merged - exact).abs().max() / scale)
    out["max"] = max(out.values()) if out else 0.0
    return out
