"""Blocks shared by every model: attention, MLP, a transformer layer, the layer runner.

Attention and norms are the public ``ptft_fast.nn`` modules (``Attention`` with fused projections,
``LayerNorm`` / ``RMSNorm``); everything numeric goes through ``ptft_fast.ops``; the other
projections are plain ``nn.Linear``. Shapes: x is (B, T, C) in the padded form or (total, C) packed (varlen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ptft_fast.models.config import ModelConfig
from ptft_fast.models.state import KV, KVCache, Packing
from ptft_fast.nn.attention import Attention
from ptft_fast.nn.norm import LayerNorm, RMSNorm
from ptft_fast.ops.graph_mode import in_graph


def effective_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """attention_mask as bool, or None when it masks nothing.

    Checked on CPU only (a free host read there, a sync on GPU) and not in graph mode (a
    data-dependent branch): without a mask, attention takes SDPA's unmasked (or is_causal) fast
    path instead of building and applying a boolean mask.
    """
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    if mask.is_cpu and not in_graph() and bool(mask.all()):
        return None
    return mask


def activation_fn(name: str):
    """The elementwise activation for a config name (validated by ModelConfig)."""
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[name]


def make_norm(size: int, eps: float, *, rms: bool = False) -> LayerNorm | RMSNorm:
    """The public ``ptft_fast.nn`` norm over the last dim: LayerNorm (weight + bias) or RMSNorm
    (weight only). Its ``forward(x, residual=..., dropout_p=..., return_residual=...)`` is the
    fused norm(dropout(x) + residual) of a block (dropout in training mode only)."""
    return RMSNorm(size, eps) if rms else LayerNorm(size, eps)


def make_attention(config: ModelConfig, *, cross: bool, bias: bool) -> Attention:
    """The public ``ptft_fast.nn.Attention`` with the model's fused projections: self-attention
    ``qkv`` (C → 3·H·D, one GEMM for q, k, v), cross-attention ``q`` (C → H·D) on the decoder and
    ``kv`` (C → 2·H·D) on the encoder memory; ``out`` (H·D → C). T5 uses no softmax scaling
    (folded into its init)."""
    return Attention(
        config.hidden_size,
        config.num_heads,
        head_dim=config.resolved_head_dim,
        bias=bias,
        dropout=config.attention_dropout,
        softmax_scale=1.0 if config.arch == "t5" else None,
        fuse="kv" if cross else "qkv",
    )


class MLP(nn.Module):
    """fc_out(act(fc_in(x))), or gated (T5 v1.1): fc_in = [W0; W1] → act(x W0) * (x W1)."""

    def __init__(self, config: ModelConfig, *, bias: bool = True):
        super().__init__()
        self.gated = config.gated_ffn
        width = config.ffn_size * (2 if self.gated else 1)
        self.fc_in = nn.Linear(config.hidden_size, width, bias=bias)
        self.fc_out = nn.Linear(config.ffn_size, config.hidden_size, bias=bias)
        self.act = activation_fn(config.activation)
        self.dropout = config.activation_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        if self.gated:
            gate, lin = h.chunk(2, dim=-1)
            h = self.act(gate) * lin
        else:
            h = self.act(h)
        if self.dropout > 0.0 and self.training:
            h = F.dropout(h, self.dropout, training=True)
        return self.fc_out(h)


class Layer(nn.Module):
    """One transformer layer: self-attention, optional cross-attention, MLP.

    Post-norm (BERT, BART): x = norm(x + dropout(sublayer(x))) per sublayer.
    Pre-norm (GPT-2, T5): x = x + dropout(sublayer(norm(x))); each residual add is fused with
    the next sublayer's norm (``ops.layer_norm(..., residual=x, return_residual=True)``).
    """

    def __init__(self, config: ModelConfig, *, cross: bool, pre_norm: bool, rms: bool, bias: bool):
        super().__init__()
        eps = config.norm_eps
        self.pre_norm = pre_norm
        self.dropout = config.dropout
        self.attn = make_attention(config, cross=False, bias=bias)
        self.attn_norm = make_norm(config.hidden_size, eps, rms=rms)
        self.cross = make_attention(config, cross=True, bias=bias) if cross else None
        self.cross_norm = make_norm(config.hidden_size, eps, rms=rms) if cross else None
        self.mlp = MLP(config, bias=bias)
        self.mlp_norm = make_norm(config.hidden_size, eps, rms=rms)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        packing: Packing | None = None,
        prefix_lengths: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        past_self: KV | None = None,
        past_cross: KV | None = None,
        attentions: list[torch.Tensor] | None = None,
        cross_attentions: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KV, KV | None]:
        """``attentions`` / ``cross_attentions``: lists that receive this layer's self- and
        cross-attention probabilities (B, H, T, Tk) when given (see ``Attention.forward``);
        ``prefix_lengths``: the self-attention's prefix LM lengths."""
        p = self.dropout if self.training else 0.0
        cross_kv = None
        a, self_kv = self.attn(
            self.attn_norm(x) if self.pre_norm else x,
            past=past_self,
            causal=causal,
            key_padding_mask=key_padding_mask,
            attn_bias=attn_bias,
            prefix_lengths=prefix_lengths,
            weights=attentions,
            return_kv=True,
            **(packing.varlen_args() if packing is not None else {}),
        )
        if self.pre_norm:
            if self.cross is not None:
                n, x = self.cross_norm(a, residual=x, dropout_p=p, return_residual=True)
                a, cross_kv = self._cross(n, memory, memory_mask, past_cross, cross_attentions)
            n, x = self.mlp_norm(a, residual=x, dropout_p=p, return_residual=True)
            m = self.mlp(n)
            return x + (F.dropout(m, p, training=True) if p > 0.0 else m), self_kv, cross_kv
        x = self.attn_norm(a, residual=x, dropout_p=p)
        if self.cross is not None:
            a, cross_kv = self._cross(x, memory, memory_mask, past_cross, cross_attentions)
            x = self.cross_norm(a, residual=x, dropout_p=p)
        return self.mlp_norm(self.mlp(x), residual=x, dropout_p=p), self_kv, cross_kv

    def _cross(self, x, memory, memory_mask, past, weights) -> tuple[torch.Tensor, KV]:
        """Cross-attention from x (B, T, C) to memory (B, S, C); ``past``: memory's keys/values
        projected on an earlier decoding step."""
        return self.cross(x, memory, key_padding_mask=memory_mask, past=past, weights=weights, return_kv=True)

    def forward_rows(
        self, x: torch.Tensor, rows: torch.Tensor, keys: Packing, queries: Packing
    ) -> torch.Tensor:
        """Post-norm self-attention layer computed only at packed token indices ``rows`` (n,):
        keys/values still come from all of x (total, C). Returns (n, C)."""
        if self.pre_norm or self.cross is not None:
            raise NotImplementedError("forward_rows is for post-norm encoder layers")
        p = self.dropout if self.training else 0.0
        xq = x.index_select(0, rows)
        a = self.attn(xq, x, **queries.varlen_args(keys))
        h = self.attn_norm(a, residual=xq, dropout_p=p)
        return self.mlp_norm(self.mlp(h), residual=h, dropout_p=p)


def run_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    *,
    checkpointing: bool,
    cache: KVCache | None = None,
    use_cache: bool = False,
    hidden_states: list[torch.Tensor] | None = None,
    **kw,
) -> tuple[torch.Tensor, KVCache | None]:
    """Apply ``layers`` in order, with gradient checkpointing and/or a KV cache.

    With ``use_cache`` the returned cache holds every layer's keys/values (extending ``cache``).
    Checkpointing recomputes each layer in backward (dropout masks are replayed: RNG state is
    saved) and is only active while training with grad enabled. ``hidden_states``: a list that
    receives each layer's input (the embeddings first); the caller appends the final output.
    """
    recompute = checkpointing and torch.is_grad_enabled() and layers.training
    if recompute and use_cache:
        raise ValueError("use_cache=True cannot be combined with gradient checkpointing while training")
    new = KVCache() if use_cache else None
    for i, layer in enumerate(layers):
        past_self = cache.self_attn[i] if cache is not None else None
        past_cross = cache.cross_attn[i] if cache is not None and cache.cross_attn else None
        if hidden_states is not None:
            hidden_states.append(x)
        if recompute:
            x, kv, ckv = checkpoint(
                layer, x, use_reentrant=False, past_self=past_self, past_cross=past_cross, **kw
            )
        else:
            x, kv, ckv = layer(x, past_self=past_self, past_cross=past_cross, **kw)
        if new is not None:
            new.self_attn.append(kv)
            new.cross_attn.append(ckv)
    return x, new


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear/embedding weights, zeros for biases (norms keep ones/zeros)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])


def embed_scale(config: ModelConfig) -> float:
    """BART's optional sqrt(d_model) token-embedding scale."""
    return math.sqrt(config.hidden_size) if config.scale_embedding else 1.0
