"""T5 relative position bias as an ``attention`` bias: a learned (num_buckets, H) table indexed by
the bucket of the key-minus-query distance. Backends that can (Triton, CUDA) look it up inside the
attention kernel and accumulate the table's gradient there; the others :meth:`materialize` it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Bucket of each (key - query) distance, exactly as Hugging Face T5.

    relative_position: int64 tensor of j - i. Half the buckets (per direction when
    ``bidirectional``) are exact small distances, the rest log-spaced up to ``max_distance``.
    Returns int64 buckets in [0, num_buckets), same shape.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, if_large)


@dataclass(frozen=True, eq=False)
class RelativePositionBias:
    """T5 relative attention bias for ``ptft_fast.ops.attention(..., attn_bias=...)``.

    table: (num_buckets, Hq) learned values (differentiable). bidirectional: encoder (True) or
    causal decoder (False) bucketing. num_buckets, max_distance: as in the T5 config.
    """

    table: torch.Tensor
    bidirectional: bool = True
    num_buckets: int = 32
    max_distance: int = 128

    def bucket_lut(self, tq: int, tk: int) -> torch.Tensor:
        """(tq + tk - 1,) int32: bucket of distance d = j - i stored at index d + tq - 1."""
        rel = torch.arange(-(tq - 1), tk, device=self.table.device)
        return relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance).to(
            torch.int32
        )

    def materialize(self, tq: int, tk: int) -> torch.Tensor:
        """The dense bias (1, Hq, tq, tk), positions counted from 0 for queries and keys."""
        rel = (
            torch.arange(tk, device=self.table.device)[None, :]
            - torch.arange(tq, device=self.table.device)[:, None]
        )
        buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.table[buckets].permute(2, 0, 1).unsqueeze(0)  # (tq, tk, H) → (1, H, tq, tk)
