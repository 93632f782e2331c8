"""Output heads: tied MLM head (masked-token loss), NSP head, LM head.

Losses go through ``ops.linear_cross_entropy``, so the (N, V) logits are never built for the
loss; the MLM head goes further and runs its transform only on the labeled rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast import ops
from ptft_fast.models.blocks import activation_fn, make_norm
from ptft_fast.models.config import ModelConfig
from ptft_fast.ops.graph_mode import in_graph

IGNORE_INDEX = -100


class MLMHead(nn.Module):
    """BERT/RoBERTa MLM head: dense → act → LayerNorm → tied vocab projection + bias.

    With labels, only rows whose label is not IGNORE_INDEX (≈15% of tokens) go through the
    transform and the vocab projection: loss = mean CE over those rows.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation_fn(config.activation)
        self.norm = make_norm(config.hidden_size, config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(h)))

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, C), weight: (V, C) tied embedding → (B, T, V)."""
        return nn.functional.linear(self.transform(hidden), weight, self.bias)

    def loss(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """hidden: (..., C), labels: (...) with IGNORE_INDEX at unmasked tokens → scalar mean loss."""
        flat_labels = labels.reshape(-1)
        flat = hidden.reshape(-1, hidden.shape[-1])
        if flat.is_cpu and not in_graph():
            # Select the labeled rows first (a free host read on CPU): the transform then runs on
            # ~15% of the tokens. On GPU (and in graph mode) linear_cross_entropy masks rows itself.
            rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
            flat, flat_labels = flat.index_select(0, rows), flat_labels.index_select(0, rows)
        if flat.shape[0] == 0:  # no labeled token: zero loss that still backpropagates
            return hidden.sum() * 0.0
        return ops.linear_cross_entropy(self.transform(flat), weight, flat_labels, self.bias)


class NSPHead(nn.Module):
    """BERT pooler (dense + tanh on the first token) and the 2-way next-sentence classifier."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, C) → (B, 2) logits."""
        return self.classifier(torch.tanh(self.pooler(hidden[:, 0])))


class LMHead(nn.Module):
    """Vocab projection for causal / seq2seq LM: tied (weight passed in) or its own ``weight``.

    ``scale`` multiplies the hidden states first (T5 v1.0 tied head); ``bias`` is an optional
    (V,) tensor (BART's final_logits_bias buffer).
    """

    def __init__(self, config: ModelConfig, *, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        if config.tie_word_embeddings:
            self.weight = None
        else:
            self.weight = nn.Parameter(
                torch.randn(config.vocab_size, config.hidden_size) * config.initializer_range
            )

    def _prep(self, hidden: torch.Tensor, tied: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.weight if self.weight is not None else tied
        return (hidden * self.scale if self.scale != 1.0 else hidden), weight

    def logits(
        self, hidden: torch.Tensor, tied: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden: (B, T, C) → (B, T, V)."""
        h, weight = self._prep(hidden, tied)
        return nn.functional.linear(h, weight, bias)

    def loss(
        self,
        hidden: torch.Tensor,
        tied: torch.Tensor,
        labels: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        shift: bool = False,
    ) -> torch.Tensor:
        """Mean CE over labels != IGNORE_INDEX. ``shift``: position t predicts labels[t + 1] (causal LM)."""
        if shift:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        h, weight = self._prep(hidden, tied)
        return ops.linear_cross_entropy(h, weight, labels, bias, ignore_index=IGNORE_INDEX)
