"""(IA)³: learned per-feature rescaling of attention keys/values and the feed-forward input."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ptft_fast.peft.core import matches, replace_module


@dataclass
class IA3Config:
    target_modules: str | list[str] = field(default_factory=lambda: ["kv", "qkv", "fc_out"])
    feedforward_modules: str | list[str] = field(default_factory=lambda: ["fc_out"])
    # feed-forward targets scale their input (in,), others their output (out,)

    def to_dict(self) -> dict:
        return {"peft_type": "ia3", **asdict(self)}


class IA3Linear(nn.Module):
    """Frozen ``base`` linear with a learned vector ``ia3_l`` (init ones).

    feedforward: y = base(x ⊙ l), l: (in,). Otherwise: y = base(x) ⊙ l, l: (out,) (bias scaled too).
    """

    def __init__(self, base: nn.Linear, feedforward: bool):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.feedforward = feedforward
        size = base.in_features if feedforward else base.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) → (..., out)."""
        if self.feedforward:
            return self.base(x * self.ia3_l)
        return self.base(x) * self.ia3_l


def apply_ia3(model: nn.Module, config: IA3Config) -> list[str]:
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and n and matches(n, config.target_modules)
    ]
    if not names:
        raise ValueError(f"apply_ia3: target_modules={config.target_modules!r} matched no nn.Linear")
    for n in names:
        ff = matches(n, config.feedforward_modules)
        replace_module(model, n, IA3Linear(model.get_submodule(n), ff))
    return names
