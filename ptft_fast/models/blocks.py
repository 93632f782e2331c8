"""Blocks shared by every model: attention, MLP, a transformer layer, the layer runner.

Everything numeric goes through ``ptft_fast.ops`` (layer_norm, attention); projections are plain
``nn.Linear``. Shapes: x is (B, T, C) in the padded form or (total, C) packed (varlen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ptft_fast import ops
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.state import KV, KVCache, Packing
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


class Attention(nn.Module):
    """Multi-head self- or cross-attention with fused projections (one GEMM for q, k, v).

    Self: ``qkv`` (C → 3·H·D). Cross: ``q`` (C → H·D) on the decoder, ``kv`` (C → 2·H·D) on the
    encoder memory. ``out`` (H·D → C). T5 uses no softmax scaling (folded into its init).
    """

    def __init__(self, config: ModelConfig, *, cross: bool = False, bias: bool = True):
        super().__init__()
        self.heads, self.head_dim = config.num_heads, config.resolved_head_dim
        inner, hidden = config.attn_dim, config.hidden_size
        self.cross = cross
        if cross:
            self.q = nn.Linear(hidden, inner, bias=bias)
            self.kv = nn.Linear(hidden, 2 * inner, bias=bias)
        else:
            self.qkv = nn.Linear(hidden, 3 * inner, bias=bias)
        self.out = nn.Linear(inner, hidden, bias=bias)
        self.dropout = config.attention_dropout
        self.softmax_scale = 1.0 if config.arch == "t5" else None

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: torch.Tensor | None = None,
        past: KV | None = None,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        packing: Packing | None = None,
        prefix_lengths: torch.Tensor | None = None,
        weights: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """x: (B, T, C) or packed (total, C); memory: (B, S, C) for cross-attention;
        prefix_lengths: (B,) or (S,) packed, prefix LM (see ``ops.attention``).

        Returns the output like x and the (keys, values) to cache: for self-attention the past
        ones concatenated with the new ones, (B, past + T, H, D). With a list ``weights`` (padded
        form only), the attention probabilities (B, H, T, Tk) are appended to it.
        """
        lead = x.shape[:-1]
        hd = (self.heads, self.head_dim)
        if self.cross:
            q = self.q(x).view(*lead, *hd)
            if past is None:
                k, v = self.kv(memory).view(*memory.shape[:-1], 2, *hd).unbind(-3)
            else:
                k, v = past
        else:
            q, k, v = self.qkv(x).view(*lead, 3, *hd).unbind(-3)  # (B, T, H, D) each
            if past is not None:
                k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        cu, longest = (packing.cu_seqlens, packing.max_seqlen) if packing is not None else (None, None)
        if weights is not None:
            if packing is not None:
                raise ValueError("attention weights are returned for padded batches only (not packed)")
            weights.append(
                ops.attention_weights(
                    q,
                    k,
                    causal=causal,
                    key_padding_mask=key_padding_mask,
                    attn_bias=attn_bias,
                    softmax_scale=self.softmax_scale,
                    prefix_lengths=prefix_lengths,
                )
            )
        o = ops.attention(
            q,
            k,
            v,
            causal=causal,
            key_padding_mask=key_padding_mask,
            cu_seqlens_q=cu,
            cu_seqlens_k=cu,
            max_seqlen_q=longest,
            max_seqlen_k=longest,
            attn_bias=attn_bias,
            dropout_p=self.dropout if self.training else 0.0,
            softmax_scale=self.softmax_scale,
            prefix_lengths=prefix_lengths,
        )
        return self.out(o.reshape(*lead, -1)), (k, v)

    def forward_rows(
        self, x: torch.Tensor, xq: torch.Tensor, keys: Packing, queries: Packing
    ) -> torch.Tensor:
        """Self-attention evaluated at a subset of query rows: keys/values from every packed token
        x (total, C), queries from xq (n, C) packed per sequence as ``queries`` describes."""
        inner = self.heads * self.head_dim
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(xq, w[:inner], b[:inner] if b is not None else None).view(-1, self.heads, self.head_dim)
        kv = F.linear(x, w[inner:], b[inner:] if b is not None else None)
        k, v = kv.view(-1, 2, self.heads, self.head_dim).unbind(1)
        o = ops.attention(
            q,
            k,
            v,
            cu_seqlens_q=queries.cu_seqlens,
            cu_seqlens_k=keys.cu_seqlens,
            max_seqlen_q=queries.max_seqlen,
            max_seqlen_k=keys.max_seqlen,
            dropout_p=self.dropout if self.training else 0.0,
            softmax_scale=self.softmax_scale,
        )
        return self.out(o.reshape(-1, inner))


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
        self.attn = Attention(config, bias=bias)
        self.attn_norm = make_norm(config.hidden_size, eps, rms=rms)
        self.cross = Attention(config, cross=True, bias=bias) if cross else None
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
            packing=packing,
            prefix_lengths=prefix_lengths,
            weights=attentions,
        )
        if self.pre_norm:
            if self.cross is not None:
                n, x = self.cross_norm(a, residual=x, dropout_p=p, return_residual=True)
                a, cross_kv = self.cross(
                    n, memory=memory, past=past_cross, key_padding_mask=memory_mask, weights=cross_attentions
                )
            n, x = self.mlp_norm(a, residual=x, dropout_p=p, return_residual=True)
            m = self.mlp(n)
            return x + (F.dropout(m, p, training=True) if p > 0.0 else m), self_kv, cross_kv
        x = self.attn_norm(a, residual=x, dropout_p=p)
        if self.cross is not None:
            a, cross_kv = self.cross(
                x, memory=memory, past=past_cross, key_padding_mask=memory_mask, weights=cross_attentions
            )
            x = self.cross_norm(a, residual=x, dropout_p=p)
        return self.mlp_norm(self.mlp(x), residual=x, dropout_p=p), self_kv, cross_kv

    def forward_rows(
        self, x: torch.Tensor, rows: torch.Tensor, keys: Packing, queries: Packing
    ) -> torch.Tensor:
        """Post-norm self-attention layer computed only at packed token indices ``rows`` (n,):
        keys/values still come from all of x (total, C). Returns (n, C)."""
        if self.pre_norm or self.cross is not None:
            raise NotImplementedError("forward_rows is for post-norm encoder layers")
        p = self.dropout if self.training else 0.0
        xq = x.index_select(0, rows)
        h = self.attn_norm(self.attn.forward_rows(x, xq, keys, queries), residual=xq, dropout_p=p)
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
