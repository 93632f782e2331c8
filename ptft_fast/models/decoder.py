"""Decoder-only model: pre-norm GPT-2 (causal, learned positions, tied LM head, KV cache)."""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast.models.blocks import (
    Layer,
    Norm,
    effective_mask,
    init_weights,
    run_layers,
)
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.heads import LMHead
from ptft_fast.models.state import KVCache, ModelOutput


class DecoderForCausalLM(nn.Module):
    """GPT-2: token + position embeddings, pre-norm causal layers, final norm, tied LM head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "gpt2":
            raise ValueError(f"DecoderForCausalLM: config.arch must be gpt2, got {config.arch!r}")
        self.config = config
        c = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, c)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, c)
        self.layers = nn.ModuleList(
            Layer(config, cross=False, pre_norm=True, rms=False, bias=True) for _ in range(config.num_layers)
        )
        self.final_norm = Norm(c, config.norm_eps)
        self.lm_head = LMHead(config)
        init_weights(self, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        use_cache: bool = False,
        return_logits: bool | None = None,
    ) -> ModelOutput:
        """input_ids: (B, T) new tokens; attention_mask: (B, past + T), 1/True = token (covers the
        cached positions too); labels: (B, T), position t is scored against labels[t + 1] (the
        shift happens here), IGNORE_INDEX (-100) skipped.

        ``cache`` holds the keys/values of earlier positions; new positions start at its length.
        Logits are computed when there are no labels or ``return_logits=True``.
        """
        cfg = self.config
        past = cache.length if cache is not None else 0
        total = past + input_ids.shape[1]
        if total > cfg.max_position_embeddings:
            raise ValueError(
                f"gpt2: {total} positions (cache {past} + new {input_ids.shape[1]}) exceed "
                f"max_position_embeddings={cfg.max_position_embeddings}"
            )
        if attention_mask is not None and attention_mask.shape[-1] != total:
            raise ValueError(
                f"gpt2: attention_mask must be (B, past + T) = (B, {total}), got {tuple(attention_mask.shape)}"
            )
        positions = torch.arange(past, total, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        if self.training and cfg.dropout > 0.0:
            x = nn.functional.dropout(x, cfg.dropout, training=True)
        mask = effective_mask(attention_mask)
        x, new_cache = run_layers(
            self.layers,
            x,
            checkpointing=cfg.gradient_checkpointing,
            cache=cache,
            use_cache=use_cache,
            causal=True,
            key_padding_mask=mask,
        )
        h = self.final_norm(x)
        weight = self.embed_tokens.weight
        loss = self.lm_head.loss(h, weight, labels, shift=True) if labels is not None else None
        if return_logits is None:
            return_logits = labels is None
        logits = self.lm_head.logits(h, weight) if return_logits else None
        return ModelOutput(loss=loss, logits=logits, hidden_states=h, cache=new_cache)
