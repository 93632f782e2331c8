"""LoRALinear: a frozen linear layer plus a trainable low-rank update, via ``ops.lora_linear``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast import ops


class LoRALinear(nn.Module):
    """y = x Wᵀ + b + (alpha / r) · (dropout(x) Aᵀ) Bᵀ, with W and b frozen.

    Parameters: ``weight`` (out, in) and ``bias`` (out,) — the frozen base layer, under the names
    ``nn.Linear`` uses — and the trainable ``lora_A`` (r, in), initialised kaiming-uniform(a=√5)
    like ``nn.Linear``, and ``lora_B`` (out, r), initialised to zeros so the layer starts out
    equal to its base. ``merge()`` folds the update into ``weight`` (forward is then one matmul);
    ``unmerge()`` takes it out again.

    Args:
        in_features, out_features: sizes of the base layer.
        r: rank of the update, >= 1.
        alpha: scaling numerator; the update is scaled by alpha / r.
        dropout: dropout probability on the input of the low-rank path (training only).
        bias: whether the base layer has a bias.
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRALinear: r must be an int >= 1, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRALinear: dropout must be in [0, 1), got {dropout!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.scaling = alpha / r
        self.backend = backend
        self.merged = False
        base = nn.Linear(in_features, out_features, bias=bias, **factory)
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, **factory))
        self.reset_lora_parameters()

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        backend: str | None = None,
    ) -> LoRALinear:
        """Wrap ``linear``: its weight and bias are shared (not copied) and frozen."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"LoRALinear.from_linear: linear must be an nn.Linear, got {type(linear).__name__}"
            )
        w = linear.weight
        new = cls(
            linear.in_features,
            linear.out_features,
            r,
            alpha,
            dropout,
            bias=linear.bias is not None,
            device="meta",
            dtype=w.dtype,
            backend=backend,
        )
        new.weight = linear.weight.requires_grad_(False)
        new.bias = None if linear.bias is None else linear.bias.requires_grad_(False)
        new.lora_A = nn.Parameter(torch.empty(r, linear.in_features, device=w.device, dtype=w.dtype))
        new.lora_B = nn.Parameter(torch.empty(linear.out_features, r, device=w.device, dtype=w.dtype))
        new.reset_lora_parameters()
        return new

    def reset_lora_parameters(self) -> None:
        """A ~ kaiming-uniform(a=√5) (nn.Linear's init), B = 0: the update starts at exactly zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """scaling · B A: (out, in) in weight's dtype, computed in fp32 (fp64 for fp64)."""
        acc = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        delta = (self.lora_B.to(acc) @ self.lora_A.to(acc)) * self.scaling
        return delta.to(self.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (W += scaling · B A); forward is then a plain linear."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge: already merged")
        self.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of ``weight`` again (W -= scaling · B A, the same rounded delta)."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge: not merged")
        self.weight.sub_(self.delta_weight())
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) → (..., out_features)."""
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        return ops.lora_linear(
            x,
            self.weight,
            self.bias,
            self.lora_A,
            self.lora_B,
            self.scaling,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        s = (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, dropout={self.dropout}"
        )
        if self.merged:
            s += ", merged=True"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
