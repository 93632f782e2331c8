"""Prefix tuning: trainable key/value prefixes for every self-attention layer.

``PrefixEncoder`` produces (B, P, L, 2, H, D) — per virtual token, layer l's keys then values —
either straight from an embedding table or through a reparameterisation MLP
(embedding → Linear → tanh → Linear), the layout peft uses.

``PrefixTuning`` wraps a model. Hugging Face models get the prefixes as ``past_key_values``
(a ``DynamicCache``); ptft_fast models get each self-attention module wrapped so its keys and
values are prepended (the model's attention is bottom-right causal, so queries see all of the
prefix). The attention mask is extended by P ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ptft_fast.models.blocks import Attention


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
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None  # set per forward by PrefixTuning

    def forward(self, x, *, past=None, key_padding_mask=None, packing=None, **kw):
        if past is None and self.kv is not None:
            if packing is not None:
                raise ValueError("prefix tuning does not support packed (varlen) batches")
            past = self.kv
            p = past[0].shape[1]
            if key_padding_mask is not None:
                key_padding_mask = torch.cat(
                    [key_padding_mask.new_ones(x.shape[0], p), key_padding_mask], dim=1
                )
        return self.attn(x, past=past, key_padding_mask=key_padding_mask, packing=packing, **kw)


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
        self.wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, Attention) and not m.cross]
        self.hf = not self.wrappers
        if self.hf:
            layers, heads, head_dim = _hf_dims(model.config)
        else:
            layers, heads, head_dim = (
                len(self.wrappers),
                self.wrappers[0][1].heads,
                self.wrappers[0][1].head_dim,
            )
            for n, m in self.wrappers:
                parent, _, child = n.rpartition(".")
                setattr(model.get_submodule(parent), child, PrefixAttention(m))
            self.wrappers = [model.get_submodule(n) for n, _ in self.wrappers]
        self.prefix_encoder = PrefixEncoder(config, layers, heads, head_dim)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        b, p = input_ids.shape[0], self.num_virtual_tokens
        prefix = self.prefix_encoder(b)  # (B, P, L, 2, H, D)
        if self.hf:
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask.new_ones(b, p), attention_mask], dim=1)
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
            for layer in range(prefix.shape[2]):
                k, v = prefix[:, :, layer, 0].transpose(1, 2), prefix[:, :, layer, 1].transpose(1, 2)
                cache.update(k, v, layer)  # (B, H, P, D)
            return self.model(input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs)
        for layer, w in enumerate(self.wrappers):
            w.kv = (prefix[:, :, layer, 0], prefix[:, :, layer, 1])  # (B, P, H, D)
        try:
            # ptft models take (B, T) masks: the wrappers extend them per layer themselves.
            return self.model(input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            for w in self.wrappers:
                w.kv = None
