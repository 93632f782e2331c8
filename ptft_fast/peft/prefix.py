"""Prefix tuning: trainable key/value prefixes for every self-attention layer.

``PrefixEncoder`` produces (B, P, L, 2, H, D) — per virtual token, layer l's keys then values —
either straight from an embedding table or through a reparameterisation MLP
(embedding → Linear → tanh → Linear), the layout peft uses.

``PrefixTuning`` wraps a model. Hugging Face models get the prefixes as ``past_key_values``
(a ``DynamicCache``); ptft_fast models get each self-attention module wrapped so its keys and
values are prepended (the model's attention is bottom-right causal, so queries see all of the
prefix). The attention mask is extended by P ones.

On ptft_fast models the prefix has no position: real tokens keep positions 0.., T5's relative
bias is zero towards prefix keys, and a KV cache holds real positions only (its length is the
position offset the models use); the prefix is attached again at every cached step. The wrapper
forwards ``encode`` and ``config``, so ``ptft_fast.generate.generate`` runs on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast.models.blocks import Layer
from ptft_fast.nn.attention import Attention


@dataclass
class PrefixTuningConfig:
    num_virtual_tokens: int = 10
    projection: bool = False  # reparameterise through an MLP (Li & Liang)
    projection_hidden: int = 128

    def to_dict(self) -> dict:
        return {"peft_type": "prefix", **asdict(self)}


class PrefixEncoder(nn.Module):
    """forward(batch) → (B, P, L, 2, H, D)."""

    def __init__(self, config: PrefixTuningConfig, num_layers: int, num_heads: int, head_dim: int):
        super().__init__()
        self.shape = (config.num_virtual_tokens, num_layers, 2, num_heads, head_dim)
        width = num_heads * head_dim
        out = num_layers * 2 * width
        self.projection = config.projection
        if config.projection:
            self.prefix_embedding = nn.Embedding(config.num_virtual_tokens, width)
            self.prefix_mlp = nn.Sequential(
                nn.Linear(width, config.projection_hidden),
                nn.Tanh(),
                nn.Linear(config.projection_hidden, out),
            )
        else:
            self.prefix_embedding = nn.Embedding(config.num_virtual_tokens, out)

    def forward(self, batch: int) -> torch.Tensor:
        x = self.prefix_embedding.weight  # (P, width or out)
        if self.projection:
            x = self.prefix_mlp(x)
        return x.view(1, *self.shape).expand(batch, *self.shape)


class PrefixAttention(nn.Module):
    """A ptft_fast self-attention module with this layer's prefix keys/values prepended."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.attn = attn
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, P, H, D) each, set by PrefixTuning

    def forward(self, x, *, past=None, key_padding_mask=None, attn_bias=None, **kw):
        """x: (B, T, C); past: (B, Tp, H, D) cached real keys/values (no prefix); key_padding_mask:
        (B, Tp + T); attn_bias: (1 or B, H, T, Tp + T); the rest as ``Attention.forward``. Returns
        the output and the keys/values to cache, (B, Tp + T, H, D), without the prefix."""
        if self.kv is None:
            return self.attn(x, past=past, key_padding_mask=key_padding_mask, attn_bias=attn_bias, **kw)
        if kw.get("cu_seqlens_q") is not None:
            raise ValueError("prefix tuning does not support packed (varlen) batches")
        pk, pv = self.kv
        p = pk.shape[1]
        full = (pk, pv) if past is None else (torch.cat([pk, past[0]], 1), torch.cat([pv, past[1]], 1))
        if key_padding_mask is not None:
            key_padding_mask = torch.cat([key_padding_mask.new_ones(x.shape[0], p), key_padding_mask], dim=1)
        if attn_bias is not None:
            attn_bias = F.pad(attn_bias, (p, 0))  # prefix keys carry no position: zero bias
        if kw.get("prefix_lengths") is not None:  # prefix LM: its prefix starts after the P keys
            kw["prefix_lengths"] = kw["prefix_lengths"] + p
        out, (k, v) = self.attn(x, past=full, key_padding_mask=key_padding_mask, attn_bias=attn_bias, **kw)
        return out, (k[:, p:], v[:, p:])


def _hf_dims(config) -> tuple[int, int, int]:
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, heads, head_dim


class PrefixTuning(nn.Module):
    """Wraps ``model`` (HF or ptft_fast); forward(input_ids (B, T), attention_mask (B, T), ...)."""

    def __init__(self, model: nn.Module, config: PrefixTuningConfig):
        super().__init__()
        self.model = model
        self.num_virtual_tokens = config.num_virtual_tokens
        self.wrappers = [(f"{n}.attn", m.attn) for n, m in model.named_modules() if isinstance(m, Layer)]
        self.hf = not self.wrappers
        if self.hf:
            layers, heads, head_dim = _hf_dims(model.config)
        else:
            layers, heads, head_dim = (
                len(self.wrappers),
                self.wrappers[0][1].num_kv_heads,
                self.wrappers[0][1].head_dim,
            )
            for n, m in self.wrappers:
                parent, _, child = n.rpartition(".")
                setattr(model.get_submodule(parent), child, PrefixAttention(m))
            self.wrappers = [model.get_submodule(n) for n, _ in self.wrappers]
        self.prefix_encoder = PrefixEncoder(config, layers, heads, head_dim)

    @property
    def config(self):
        """The wrapped model's config (generation reads it)."""
        return self.model.config

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ptft_fast encoder-decoder: (B, S) → encoder memory (B, S, C), encoder prefixes applied."""
        with self._prefixes(input_ids.shape[0]):
            return self.model.encode(input_ids, attention_mask)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        """input_ids: (B, T), or None for an encoder-decoder given ``encoder_hidden_states``
        (from ``encode``) and ``decoder_input_ids``; attention_mask: (B, T) real tokens only."""
        if self.hf:
            return self._forward_hf(input_ids, attention_mask, **kwargs)
        with self._prefixes(_batch_size(input_ids, kwargs)):
            # ptft models take (B, T) masks: the wrappers extend them per layer themselves.
            return self.model(input_ids, attention_mask=attention_mask, **kwargs)

    @contextmanager
    def _prefixes(self, batch: int) -> Iterator[None]:
        """Attach every layer's (B, P, H, D) prefix keys/values for one forward."""
        prefix = self.prefix_encoder(batch)  # (B, P, L, 2, H, D)
        for layer, w in enumerate(self.wrappers):
            w.kv = (prefix[:, :, layer, 0], prefix[:, :, layer, 1])
        try:
            yield
        finally:
            for w in self.wrappers:
                w.kv = None

    def _forward_hf(self, input_ids, attention_mask, **kwargs):
        b, p = input_ids.shape[0], self.num_virtual_tokens
        prefix = self.prefix_encoder(b)  # (B, P, L, 2, H, D)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, p), attention_mask], dim=1)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(prefix.shape[2]):
            k, v = prefix[:, :, layer, 0].transpose(1, 2), prefix[:, :, layer, 1].transpose(1, 2)
            cache.update(k, v, layer)  # (B, H, P, D)
        return self.model(input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs)


def _batch_size(input_ids: torch.Tensor | None, kwargs: dict) -> int:
    """Rows of a forward call: from input_ids, else the decoder inputs or the encoder memory."""
    for t in (input_ids, kwargs.get("decoder_input_ids"), kwargs.get("encoder_hidden_states")):
        if t is not None:
            return t.shape[0]
    raise ValueError("prefix tuning: give input_ids, decoder_input_ids or encoder_hidden_states")
