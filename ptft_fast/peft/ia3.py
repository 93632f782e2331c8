"""(IA)³ (Liu et al. 2022): learned rescaling of attention keys and values and of the feed-forward
inner activation — not of the queries.

On the ptft_fast model core: self-attention's fused ``qkv`` projection gets a vector over its key
and value outputs only (its query third is left alone), cross-attention's fused ``kv`` one over
all of its outputs, and ``fc_out`` scales its input, which is the FFN's inner activation
act(fc_in x) (gated on T5 v1.1). Every vector starts at ones: the model starts out unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ptft_fast.peft.core import matches, replace_module


@dataclass
class IA3Config:
    target_modules: str | list[str] = field(default_factory=lambda: ["qkv", "kv", "fc_out"])
    feedforward_modules: str | list[str] = field(default_factory=lambda: ["fc_out"])
    # feed-forward targets scale their input (in,), others their output (out,)
    fused_qkv_modules: str | list[str] = field(default_factory=lambda: ["qkv"])
    # fused q/k/v projections (q, k, v stacked on the output rows): only k and v are scaled

    def to_dict(self) -> dict:
        return {"peft_type": "ia3", **asdict(self)}


class IA3Linear(nn.Module):
    """Frozen ``base`` linear with a learned vector ``ia3_l`` (init ones).

    feedforward: y = base(x ⊙ l), l: (in,). Otherwise y = base(x) with its output rows from
    ``skip`` on multiplied by l, l: (out - skip,) (bias scaled too); ``skip`` = the query rows
    of a fused q/k/v projection.
    """

    def __init__(self, base: nn.Linear, feedforward: bool, skip: int = 0):
        super().__init__()
        if not 0 <= skip < base.out_features:
            raise ValueError(f"IA3Linear: skip must be in [0, {base.out_features}), got {skip}")
        self.base = base.requires_grad_(False)
        self.feedforward, self.skip = feedforward, 0 if feedforward else skip
        size = base.in_features if feedforward else base.out_features - self.skip
        self.ia3_l = nn.Parameter(torch.ones(size, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) → (..., out)."""
        if self.feedforward:
            return self.base(x * self.ia3_l)
        y = self.base(x)
        if self.skip == 0:
            return y * self.ia3_l
        return torch.cat([y[..., : self.skip], y[..., self.skip :] * self.ia3_l], dim=-1)

    def merged(self) -> nn.Linear:
        """A plain linear computing the same function (the vector folded into the weights)."""
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        lin = lin.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            if self.feedforward:  # W (x ⊙ l) = (W diag(l)) x
                lin.weight.copy_(self.base.weight * self.ia3_l)
                if lin.bias is not None:
                    lin.bias.copy_(self.base.bias)
            else:  # rows from skip on scaled
                scale = torch.cat([self.ia3_l.new_ones(self.skip), self.ia3_l])
                lin.weight.copy_(self.base.weight * scale[:, None])
                if lin.bias is not None:
                    lin.bias.copy_(self.base.bias * scale)
        return lin


def apply_ia3(model: nn.Module, config: IA3Config) -> list[str]:
    """Wrap every ``nn.Linear`` matching ``config.target_modules``; returns the wrapped names."""
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and n and matches(n, config.target_modules)
    ]
    if not names:
        raise ValueError(f"apply_ia3: target_modules={config.target_modules!r} matched no nn.Linear")
    for n in names:
        base = model.get_submodule(n)
        ff = matches(n, config.feedforward_modules)
        fused = not ff and matches(n, config.fused_qkv_modules)
        if fused and base.out_features % 3:
            raise ValueError(
                f"apply_ia3: {n} is a fused q/k/v projection but has {base.out_features} outputs"
            )
        replace_module(model, n, IA3Linear(base, ff, skip=base.out_features // 3 if fused else 0))
    return names


def merge_ia3(model: nn.Module) -> int:
    """Replace every IA3Linear by the plain linear it computes; returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, IA3Linear)]
    for n in names:
        replace_module(model, n, model.get_submodule(n).merged())
    return len(names)
