"""LinearCrossEntropyLoss: the output projection and cross-entropy in one op."""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast import ops
from ptft_fast.ops.cross_entropy import REDUCTIONS


class LinearCrossEntropyLoss(nn.Module):
    """cross_entropy(hidden @ weight.T + bias, labels) without the (N, V) logits.

    Equals ``nn.CrossEntropyLoss(ignore_index, reduction, label_smoothing)`` applied to the full
    logits, plus an optional z-loss term (``z_loss · logsumexp²`` per labeled row). Rows labeled
    ``ignore_index`` never reach the vocab projection (masked-token loss). The module holds no
    parameters: the projection weight is passed in, typically the tied input embedding.

    Args:
        ignore_index: label value excluded from the loss and from the mean's denominator.
        label_smoothing: in [0, 1), as in ``nn.CrossEntropyLoss``.
        z_loss: coefficient of the auxiliary log-sum-exp² term (PaLM), >= 0.
        reduction: "mean" (over labeled rows) | "sum" | "none".
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default).
    """

    def __init__(
        self,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        reduction: str = "mean",
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"LinearCrossEntropyLoss: reduction must be one of {REDUCTIONS}, got {reduction!r}"
            )
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.reduction = reduction
        self.backend = backend

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden: (..., H); weight: (V, H); labels: (...) int64 in [0, V) or ignore_index;
        bias: (V,) or None. Returns a scalar, or labels-shaped losses for reduction="none"."""
        return ops.linear_cross_entropy(
            hidden,
            weight,
            labels,
            bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.backend is not None:
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
