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
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        return_logits: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """input_ids: (B, T) new tokens; attention_mask: (B, past + T), 1/True = token (covers the
        cached positions too); labels: (B, T), position t is scored against labels[t + 1] (the
        shift happens here), IGNORE_INDEX (-100) skipped.

        position_ids: (B, T) learned-position index of each new token. Default: without a mask,
        past..past + T - 1; with one, the number of real tokens before each token (cumsum(mask) - 1,
        clamped at 0 for left padding), as transformers' generate does: a left-padded prompt gets the
        positions it has alone, and the count continues across KV-cache steps because the mask
        covers the cached positions. Right padding leaves the real tokens at 0..n - 1.

        ``cache`` holds the keys/values of earlier positions (``cache.length`` of them).
        Logits are computed when there are no labels or ``return_logits=True``.
        ``output_hidden_states`` / ``output_attentions``: also return the embeddings' and every
        layer's output (``all_hidden_states``, N + 1 tensors (B, T, C), the last after the final
        norm) and the attention probabilities (``attentions``, (B, H, T, past + T) per layer).
        """
        cfg = self.config
        past = cache.length if cache is not None else 0
        total = past + input_ids.shape[1]
        if attention_mask is not None and attention_mask.shape[-1] != total:
            raise ValueError(
                f"gpt2: attention_mask must be (B, past + T) = (B, {total}), got {tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            position_ids = self._default_positions(attention_mask, past, total, input_ids.device)
        else:
            self._check_positions(position_ids, input_ids.shape)
        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        if self.training and cfg.dropout > 0.0:
            x = nn.functional.dropout(x, cfg.dropout, training=True)
        mask = effective_mask(attention_mask)
        states = [] if output_hidden_states else None
        attentions = [] if output_attentions else None
        x, new_cache = run_layers(
            self.layers,
            x,
            checkpointing=cfg.gradient_checkpointing,
            cache=cache,
            use_cache=use_cache,
            causal=True,
            key_padding_mask=mask,
            hidden_states=states,
            attentions=attentions,
        )
        h = self.final_norm(x)
        weight = self.embed_tokens.weight
        loss = self.lm_head.loss(h, weight, labels, shift=True) if labels is not None else None
        if return_logits is None:
            return_logits = labels is None
        logits = self.lm_head.logits(h, weight) if return_logits else None
        return ModelOutput(
            loss=loss,
            logits=logits,
            hidden_states=h,
            cache=new_cache,
            all_hidden_states=None if states is None else (*states, h),
            attentions=None if attentions is None else tuple(attentions),
        )

    def _default_positions(
        self, attention_mask: torch.Tensor | None, past: int, total: int, device: torch.device
    ) -> torch.Tensor:
        """(B or 1, T) positions of the new tokens. None exceeds total - 1, so bounding the padded
        length (a shape: no host sync) bounds them all."""
        limit = self.config.max_position_embeddings
        if total > limit:
            raise ValueError(
                f"gpt2: sequence of {total} tokens (cache {past} + new {total - past}, padding included) "
                f"exceeds max_position_embeddings={limit}; pass position_ids to place a left-padded "
                "batch yourself"
            )
        if attention_mask is None:
            return torch.arange(past, total, device=device)[None]
        positions = attention_mask.long().cumsum(-1)[:, past:] - 1  # real tokens before each token
        return positions.clamp_min(0)  # padding before the first real token

    def _check_positions(self, position_ids: torch.Tensor, shape: torch.Size) -> None:
        """Explicit positions: shape, dtype and range (one host read on GPU, where an index out of
        the table would be a device-side assert; the default positions need none)."""
        if position_ids.shape != shape or position_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"gpt2: position_ids must be an integer tensor of shape (B, T) = {tuple(shape)}, "
                f"got {position_ids.dtype} {tuple(position_ids.shape)}"
            )
        limit = self.config.max_position_embeddings
        if position_ids.numel() > 0:
            lo, hi = position_ids.aminmax()
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= limit:
                raise ValueError(
                    f"gpt2: position_ids must lie in [0, max_position_embeddings={limit}), "
                    f"got values in [{lo}, {hi}]"
                )
