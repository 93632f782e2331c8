"""Attention: multi-head (GQA/MQA) attention layer with q/k/v/o projections over ``ops.attention``."""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast import ops


class Attention(nn.Module):
    """Self- or cross-attention: out_proj(attention(q_proj(x), k_proj(kv), v_proj(kv))).

    Masks follow ``ptft_fast.ops.attention`` (FlashAttention conventions), *not*
    ``torch.nn.MultiheadAttention``: ``key_padding_mask`` is True where a key may be attended.

    Args:
        embed_dim: model width E of the queries (and of the output).
        num_heads: query heads Hq; head dim D = head_dim or E // Hq.
        num_kv_heads: key/value heads Hkv (Hq % Hkv == 0); None → Hq (MHA), 1 → MQA.
        kv_dim: width of the key/value source for cross-attention; None → E.
        head_dim: per-head size D; None → E // Hq (then E % Hq must be 0).
        bias: whether the four projections have a bias.
        dropout: attention-probability dropout (training only).
        causal: default causal flag (bottom-right aligned), overridable per call.
        softmax_scale: None → 1/sqrt(D); T5 uses 1.0.
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        *,
        kv_dim: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        softmax_scale: float | None = None,
        device=None,
        dtype=None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads != 0:
            raise ValueError(
                f"Attention: num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
            )
        if head_dim is None:
            if embed_dim % num_heads != 0:
                raise ValueError(
                    f"Attention: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) "
                    "unless head_dim is given"
                )
            head_dim = embed_dim // num_heads
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Attention: dropout must be in [0, 1), got {dropout!r}")
        factory = {"device": device, "dtype": dtype}
        kv_dim = embed_dim if kv_dim is None else kv_dim
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = (
            embed_dim,
            num_heads,
            num_kv_heads,
            head_dim,
        )
        self.dropout, self.causal, self.softmax_scale, self.backend = dropout, causal, softmax_scale, backend
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=bias, **factory)
        self.o_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias, **factory)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        causal: bool | None = None,
        prefix_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from x to kv (x itself when None).

        Args:
            x: (B, Tq, E) queries' source.
            kv: (B, Tk, kv_dim) keys'/values' source for cross-attention, or None (self-attention).
            key_padding_mask: (B, Tk) bool, True = attend.
            attn_bias: additive, broadcastable to (B, Hq, Tq, Tk) (relative position bias, ALiBi).
            causal: overrides the module's default; bottom-right aligned.
            prefix_lengths: (B,) int, with causal: prefix LM, the first prefix_lengths[b] keys are
                seen by every query (see ``ops.attention``).

        Returns:
            (B, Tq, E).
        """
        src = x if kv is None else kv
        b, tq, tk = x.shape[0], x.shape[1], src.shape[1]
        q = self.q_proj(x).view(b, tq, self.num_heads, self.head_dim)  # (B, Tq, Hq, D)
        k = self.k_proj(src).view(b, tk, self.num_kv_heads, self.head_dim)  # (B, Tk, Hkv, D)
        v = self.v_proj(src).view(b, tk, self.num_kv_heads, self.head_dim)
        out = ops.attention(
            q,
            k,
            v,
            causal=self.causal if causal is None else causal,
            key_padding_mask=key_padding_mask,
            attn_bias=attn_bias,
            dropout_p=self.dropout if self.training else 0.0,
            softmax_scale=self.softmax_scale,
            prefix_lengths=prefix_lengths,
            backend=self.backend,
        )
        return self.o_proj(out.reshape(b, tq, self.num_heads * self.head_dim))

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
        if self.causal:
            s += ", causal=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.softmax_scale is not None:
            s += f", softmax_scale={self.softmax_scale}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s
