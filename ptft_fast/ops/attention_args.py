"""The options of one attention call, bundled: what travels from the public op to a backend."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptft_fast.ops.relative_bias import RelativePositionBias


@dataclass(frozen=True, slots=True)
class AttentionArgs:
    """Everything :func:`ptft_fast.ops.attention` takes beside q, k, v (see its docstring for
    each field's contract). The public op checks them and hands one of these to the backend:
    ``impl(q, k, v, args)``. The flat torch.library schemas below the backends are unchanged.

    In varlen form ``max_seqlen_q``/``max_seqlen_k`` are set (the public op derives them).
    """

    causal: bool = False
    key_padding_mask: torch.Tensor | None = None  # (B, Tk) bool, True = attend; padded form
    cu_seqlens_q: torch.Tensor | None = None  # (B + 1,) int32/int64; varlen form
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int | None = None
    max_seqlen_k: int | None = None
    attn_bias: torch.Tensor | RelativePositionBias | None = None  # broadcastable to (B, Hq, Tq, Tk)
    dropout_p: float = 0.0
    softmax_scale: float | None = None  # None: 1 / sqrt(D)
    prefix_lengths: torch.Tensor | None = None  # (B,) int32/int64, with causal: prefix LM

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    def batch_and_lengths(self, q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int]:
        """(B, Tq, Tk): from cu_seqlens and max_seqlen in varlen form, else from the shapes."""
        if self.cu_seqlens_q is not None:
            return self.cu_seqlens_q.shape[0] - 1, self.max_seqlen_q, self.max_seqlen_k
        return q.shape[0], q.shape[1], k.shape[1]

    def scale(self, head_dim: int) -> float:
        """The softmax scale: the given one, else 1 / sqrt(D)."""
        return 1.0 / math.sqrt(head_dim) if self.softmax_scale is None else float(self.softmax_scale)


DEFAULT = AttentionArgs()
