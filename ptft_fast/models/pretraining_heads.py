"""Pre-training-only modules on top of an encoder: ELECTRA's narrow generator and SpanBERT's
span-boundary head. Both score tokens against the tied token embedding (V, E) of the encoder
they are paired with; the objective code (``ptft_fast.train.objectives``) owns the pairing.
"""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast import ops
from ptft_fast.models.blocks import Layer, activation_fn, effective_mask, init_weights, make_norm, run_layers
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.heads import IGNORE_INDEX
from ptft_fast.models.state import ModelOutput
from ptft_fast.ops.graph_mode import in_graph


def generator_config(disc: ModelConfig, size: float) -> ModelConfig:
    """ELECTRA generator config: ``size`` × the discriminator's width, same depth.

    Heads keep the discriminator's head size (heads = round(width / head size), the width rounded
    to whole heads; below one head: one head of width rounded to 8), the MLP keeps its ratio to
    the width. ELECTRA's code does the same (hidden × size, heads = hidden // 64, FFN = 4 ×)."""
    head = disc.resolved_head_dim
    width = disc.hidden_size * size
    if width >= head:
        heads = max(1, round(width / head))
        hidden = heads * head
    else:
        heads, hidden = 1, max(8, 8 * round(width / 8))
    ffn = max(1, round(disc.ffn_size * hidden / disc.hidden_size))
    return disc.replace(hidden_size=hidden, num_heads=heads, head_dim=None, ffn_size=ffn, nsp_head=False)


class ElectraGenerator(nn.Module):
    """ELECTRA's generator over the discriminator's embeddings (width E): a projection E → H_g,
    ``config.num_layers`` post-norm layers of width H_g, then the MLM transform H_g → E (dense,
    activation, LayerNorm) and the tied vocab projection with its own bias (ELECTRA's
    ``embeddings_project`` and ``generator_predictions``)."""

    def __init__(self, config: ModelConfig, embedding_size: int) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.project = nn.Linear(embedding_size, h)
        self.layers = nn.ModuleList(
            Layer(config, cross=False, pre_norm=False, rms=False, bias=True) for _ in range(config.num_layers)
        )
        self.dense = nn.Linear(h, embedding_size)
        self.act = activation_fn(config.activation)
        self.norm = make_norm(embedding_size, config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_weights(self, config.initializer_range)

    def forward(
        self,
        embeddings: torch.Tensor,
        weight: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        """embeddings: (B, T, E) from the shared embedding layer; weight: (V, E) tied token
        embedding; attention_mask / labels: (B, T). Returns the mean MLM loss over the labeled
        positions and their logits (N, V), N labeled positions in row-major order ((B, T, V)
        without labels, and in graph mode, where shapes cannot depend on the labels)."""
        x = self.project(embeddings)
        if self.training and self.config.dropout > 0.0:
            x = nn.functional.dropout(x, self.config.dropout, training=True)
        x, _ = run_layers(
            self.layers,
            x,
            checkpointing=self.config.gradient_checkpointing,
            key_padding_mask=effective_mask(attention_mask),
        )
        if labels is None:
            return ModelOutput(logits=self._logits(x, weight))
        if in_graph():  # no data-dependent shapes in a graph: score every position
            logits = self._logits(x, weight)
            loss = nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
            )
            return ModelOutput(loss=loss, logits=logits)
        keep = labels != IGNORE_INDEX
        h, y = x[keep], labels[keep]  # (N, H_g), (N,)
        logits = self._logits(h, weight)
        loss = nn.functional.cross_entropy(logits.float(), y) if len(y) else logits.sum() * 0.0
        return ModelOutput(loss=loss, logits=logits)

    def _logits(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.norm(self.act(self.dense(h))), weight, self.bias)


class SpanBoundaryHead(nn.Module):
    """SpanBERT's span-boundary objective: every token x_i of a span (s..e) is predicted from the
    encoder states of the two tokens around the span, x_{s-1} and x_{e+1}, and a relative-position
    embedding p_{i-s}: h = LN(GeLU(W2 · LN(GeLU(W1 · [x_{s-1}; x_{e+1}; p])))), scored against the
    tied token embedding with the head's own bias. Offsets past ``max_offset - 1`` share its
    embedding (spans are ≤ 10 words)."""

    def __init__(self, config: ModelConfig, max_offset: int = 32) -> None:
        super().__init__()
        c = config.hidden_size
        self.max_offset = max_offset
        self.position = nn.Embedding(max_offset, c)
        self.fc1, self.norm1 = nn.Linear(3 * c, c), make_norm(c, config.norm_eps)
        self.fc2, self.norm2 = nn.Linear(c, c), make_norm(c, config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_weights(self, config.initializer_range)

    def transform(self, left: torch.Tensor, right: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """left, right: (N, C) boundary states; offset: (N,) int64 position in the span → (N, C)."""
        p = self.position(offset.clamp(max=self.max_offset - 1))
        h = self.norm1(nn.functional.gelu(self.fc1(torch.cat([left, right, p], dim=-1))))
        return self.norm2(nn.functional.gelu(self.fc2(h)))

    def loss(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        start: torch.Tensor,
        end: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Mean cross-entropy over the labeled positions. hidden: (B, T, C) encoder output;
        weight: (V, C); start / end: (B, T) first / last position of each labeled position's span
        (:func:`ptft_fast.data.masking.span_boundaries`); labels: (B, T), -100 = not in a span."""
        rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
        if len(rows) == 0:
            return hidden.sum() * 0.0
        s, e = start[rows, cols], end[rows, cols]
        t = hidden.shape[1]
        left = hidden[rows, (s - 1).clamp(min=0)]
        right = hidden[rows, (e + 1).clamp(max=t - 1)]
        y = self.transform(left, right, cols - s)
        return ops.linear_cross_entropy(y, weight, labels[rows, cols], self.bias)
