"""Bottleneck adapters (Houlsby: after attention and after the FFN; Pfeiffer: after the FFN only).

An adapter wraps a sublayer's output projection: y = out(x); y + up(act(down(y))). For the
ptft_fast blocks that output is added to the residual right after (post- and pre-norm alike),
which is where Houlsby et al. and Pfeiffer et al. place the adapter. ``up`` starts at zero, so
the wrapped model starts out equal to the base model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ptft_fast.peft.core import matches, replace_module

PLACEMENTS = {
    "houlsby": {"attention": r".*\.attn\.out", "ffn": r".*\.mlp\.fc_out"},
    "pfeiffer": {"ffn": r".*\.mlp\.fc_out"},
}


@dataclass
class AdapterConfig:
    placement: str = "houlsby"  # "houlsby" | "pfeiffer"
    bottleneck: int = 64  # adapter hidden size
    activation: str = "relu"

    def to_dict(self) -> dict:
        return {"peft_type": "adapter", **asdict(self)}


class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))) with down: C → m, up: m → C (zero-initialised). h: (..., C)."""

    def __init__(self, size: int, bottleneck: int, activation: str = "relu", *, like: torch.Tensor):
        super().__init__()
        kw = {"device": like.device, "dtype": like.dtype}
        self.adapter_down = nn.Linear(size, bottleneck, **kw)
        self.adapter_up = nn.Linear(bottleneck, size, **kw)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.act = {"relu": nn.functional.relu, "gelu": nn.functional.gelu}[activation]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.adapter_up(self.act(self.adapter_down(h)))


class AdaptedLinear(nn.Module):
    """A frozen linear followed by a bottleneck adapter on its output."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def apply_adapters(model: nn.Module, config: AdapterConfig) -> list[str]:
    if config.placement not in PLACEMENTS:
        raise ValueError(
            f"apply_adapters: placement must be one of {sorted(PLACEMENTS)}, got {config.placement!r}"
        )
    patterns = list(PLACEMENTS[config.placement].values())
    names = [
        n for n, m in model.named_modules() if type(m) is nn.Linear and any(matches(n, p) for p in patterns)
    ]
    if not names:
        raise ValueError(
            f"apply_adapters: no sublayer output matched {patterns} (is this a ptft_fast model?)"
        )
    for n in names:
        base = model.get_submodule(n)
        adapter = BottleneckAdapter(base.out_features, config.bottleneck, config.activation, like=base.weight)
        replace_module(model, n, AdaptedLinear(base, adapter))
    return names
