"""One decoding step for each model family, with or without a KV cache.

A stepper owns the growing sequence state; ``step(tokens)`` appends tokens (B,) and returns the
next-token logits (B, V). ``first()`` runs the prompt. ``reorder(idx)`` selects rows (beams).
Without the cache, every step re-runs the whole sequence (the oracle for the cached path).
"""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast.models.blocks import KVCache


def _reorder_cache(cache: KVCache | None, idx: torch.Tensor) -> KVCache | None:
    if cache is None:
        return None
    pick = lambda kv: None if kv is None else (kv[0].index_select(0, idx), kv[1].index_select(0, idx))  # noqa: E731
    return KVCache([pick(kv) for kv in cache.self_attn], [pick(kv) for kv in cache.cross_attn])


class DecoderStepper:
    """Decoder-only (GPT): prompt input_ids (B, T) left-padded, attention_mask (B, T).

    Every call passes the mask of the whole sequence so far, (B, past + T), from which the model
    derives each token's position (real tokens before it): cached and uncached runs agree, and
    left padding does not move a prompt. A prefix LM (``config.prefix_lm``) also gets the prompt
    as its bidirectional prefix (``prefix_mask``, False on generated tokens): the prompt is encoded
    bidirectionally once, generated tokens attend causally, with or without the cache."""

    def __init__(self, model: nn.Module, input_ids, attention_mask, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.ids = input_ids
        self.mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        self.prefix = self.mask.bool() if getattr(model.config, "prefix_lm", False) else None
        self.cache: KVCache | None = None

    def _extra(self) -> dict:
        return {} if self.prefix is None else {"prefix_mask": self.prefix}

    def first(self) -> torch.Tensor:
        out = self.model(self.ids, attention_mask=self.mask, use_cache=self.use_cache, **self._extra())
        self.cache = out.cache
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        if self.prefix is not None:  # generated tokens are not part of the prefix
            self.prefix = torch.cat([self.prefix, self.prefix.new_zeros(self.prefix.shape[0], 1)], dim=1)
        if not self.use_cache:
            return self.model(self.ids, attention_mask=self.mask, **self._extra()).logits[:, -1]
        out = self.model(
            tokens[:, None], attention_mask=self.mask, cache=self.cache, use_cache=True, **self._extra()
        )
        self.cache = out.cache
        return out.logits[:, -1]

    def reorder(self, idx: torch.Tensor) -> None:
        self.ids, self.mask = self.ids.index_select(0, idx), self.mask.index_select(0, idx)
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, idx)
        self.cache = _reorder_cache(self.cache, idx)


def _real_tokens_first(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids, mask (B, S) with each row's real tokens moved to the front, in order (left padding
    becomes right padding). BART's learned encoder positions then see a prompt as if it were alone;
    the encoder is bidirectional and masks padding, and cross-attention ignores key order."""
    order = torch.sort((mask == 0).to(torch.int32), dim=1, stable=True).indices
    return input_ids.gather(1, order), mask.gather(1, order)


class EncoderDecoderStepper:
    """T5/BART: encoder input_ids (B, S), attention_mask (B, S), left or right padded; the encoder
    runs once."""

    def __init__(self, model: nn.Module, input_ids, attention_mask, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        input_ids, self.mask = _real_tokens_first(input_ids, mask)
        self.memory = model.encode(input_ids, self.mask)  # (B, S, C)
        start = model.config.decoder_start_token_id
        if start is None:
            start = model.config.pad_token_id or 0
        self.dec = input_ids.new_full((input_ids.shape[0], 1), start)
        self.cache: KVCache | None = None

    def _run(self, dec_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(
            attention_mask=self.mask,
            decoder_input_ids=dec_ids,
            encoder_hidden_states=self.memory,
            cache=self.cache,
            use_cache=self.use_cache,
        )
        self.cache = out.cache
        return out.logits[:, -1]

    def first(self) -> torch.Tensor:
        return self._run(self.dec)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.dec = torch.cat([self.dec, tokens[:, None]], dim=1)
        return self._run(tokens[:, None] if self.use_cache else self.dec)

    def reorder(self, idx: torch.Tensor) -> None:
        self.mask, self.memory = self.mask.index_select(0, idx), self.memory.index_select(0, idx)
        self.dec = self.dec.index_select(0, idx)
        self.cache = _reorder_cache(self.cache, idx)


def make_stepper(model: nn.Module, input_ids, attention_mask, use_cache: bool):
    if getattr(model.config, "is_encoder_decoder", False):
        return EncoderDecoderStepper(model, input_ids, attention_mask, use_cache)
    return DecoderStepper(model, input_ids, attention_mask, use_cache)
