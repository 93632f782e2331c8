"""Attention: multi-head (GQA/MQA) attention layer over ``ops.attention``, with separate or fused
q/k/v projections, a KV cache and the varlen (packed) form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast import ops

FUSE = (None, "qkv", "kv")
LEGACY_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "out"}  # before the fused layouts


class Attention(nn.Module):
    """Self- or cross-attention: out(attention(q(x), k(kv), v(kv))).

    Masks follow ``ptft_fast.ops.attention`` (FlashAttention conventions), *not*
    ``torch.nn.MultiheadAttention``: ``key_padding_mask`` is True where a key may be attended.

    Projections (``nn.Linear``; their names are the state-dict keys), by ``fuse``:

    - ``None``: ``q`` (E → Hq·D), ``k`` and ``v`` (kv_dim → Hkv·D);
    - ``"qkv"`` (self-attention): one ``qkv`` (E → (Hq + 2·Hkv)·D, rows q, then k, then v): one
      GEMM for all three; attending to another source slices its weight (one GEMM per source);
    - ``"kv"`` (cross-attention): ``q`` and one ``kv`` (kv_dim → 2·Hkv·D, rows k then v);

    and ``out`` (Hq·D → E). A state dict with the names of the first release (``q_proj``,
    ``k_proj``, ``v_proj``, ``o_proj``) loads under the current ones.

    Args:
        embed_dim: model width E of the queries (and of the output).
        num_heads: query heads Hq; head dim D = head_dim or E // Hq.
        num_kv_heads: key/value heads Hkv (Hq % Hkv == 0); None → Hq (MHA), 1 → MQA.
        kv_dim: width of the key/value source for cross-attention; None → E.
        head_dim: per-head size D; None → E // Hq (then E % Hq must be 0).
        bias: whether the projections have a bias.
        dropout: attention-probability dropout (training only).
        causal: default causal flag (bottom-right aligned), overridable per call.
        softmax_scale: None → 1/sqrt(D); T5 uses 1.0.
        fuse: None | "qkv" | "kv", the projection layout above.
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
        fuse: str | None = None,
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
        if fuse not in FUSE:
            raise ValueError(f"Attention: fuse must be one of {FUSE}, got {fuse!r}")
        kv_dim = embed_dim if kv_dim is None else kv_dim
        if fuse == "qkv" and kv_dim != embed_dim:
            raise ValueError(f"Attention: fuse='qkv' needs kv_dim == embed_dim ({embed_dim}), got {kv_dim}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim = (
            embed_dim,
            num_heads,
            num_kv_heads,
            head_dim,
        )
        self.dropout, self.causal, self.softmax_scale, self.backend = dropout, causal, softmax_scale, backend
        self.fuse = fuse
        nq, nkv = num_heads * head_dim, num_kv_heads * head_dim
        if fuse == "qkv":
            self.qkv = nn.Linear(embed_dim, nq + 2 * nkv, bias=bias, **factory)
        else:
            self.q = nn.Linear(embed_dim, nq, bias=bias, **factory)
            if fuse == "kv":
                self.kv = nn.Linear(kv_dim, 2 * nkv, bias=bias, **factory)
            else:
                self.k = nn.Linear(kv_dim, nkv, bias=bias, **factory)
                self.v = nn.Linear(kv_dim, nkv, bias=bias, **factory)
        self.out = nn.Linear(nq, embed_dim, bias=bias, **factory)
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        causal: bool | None = None,
        prefix_lengths: torch.Tensor | None = None,
        cu_seqlens_q: torch.Tensor | None = None,
        cu_seqlens_k: torch.Tensor | None = None,
        max_seqlen_q: int | None = None,
        max_seqlen_k: int | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        weights: list[torch.Tensor] | None = None,
        return_kv: bool = False,
    ):
        """Attend from x to kv (x itself when None).

        Args:
            x: (B, Tq, E) queries' source, or packed (total_q, E) with cu_seqlens_q/k.
            kv: (B, Tk, kv_dim) keys'/values' source (packed: (total_k, kv_dim)), or None
                (self-attention).
            key_padding_mask: (B, Tk) bool, True = attend (over past + new keys with ``past``).
            attn_bias: additive, broadcastable to (B, Hq, Tq, Tk) (relative position bias, ALiBi).
            causal: overrides the module's default; bottom-right aligned.
            prefix_lengths: (B,) int, with causal: prefix LM, the first prefix_lengths[b] keys are
                seen by every query (see ``ops.attention``).
            cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: the varlen form, as in
                ``ops.attention``.
            past: keys and values computed earlier, (B, Tp, Hkv, D) each (a KV cache). Without kv
                (self-attention) the new keys/values are appended to them; with kv they are kv's
                own, projected on an earlier call, and kv is not projected again.
            weights: a list that receives the attention probabilities (B, Hq, Tq, Tk) (padded
                form only; ``ops.attention_weights``).
            return_kv: also return the (keys, values) attended to, (B, Tk, Hkv, D) each, to cache.

        Returns:
            like x, (B, Tq, E) or (total_q, E); with ``return_kv`` the pair (output, (keys, values)).
        """
        lead = x.shape[:-1]
        if past is not None and kv is not None:
            q, (k, v) = self._queries(x), past
        else:
            q, k, v = self._project(x, kv)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=-3), torch.cat([past[1], v], dim=-3)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))  # (B, Tq, Hq, D)
        causal = self.causal if causal is None else causal
        if weights is not None:
            if cu_seqlens_q is not None:
                raise ValueError(
                    "Attention: attention weights are returned for padded batches only (not packed)"
                )
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
            cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            attn_bias=attn_bias,
            dropout_p=self.dropout if self.training else 0.0,
            softmax_scale=self.softmax_scale,
            prefix_lengths=prefix_lengths,
            backend=self.backend,
        )
        out = self.out(o.reshape(*lead, -1))
        return (out, (k, v)) if return_kv else out

    def _project(self, x: torch.Tensor, kv: torch.Tensor | None):
        """q (…, Hq·D) flat; k, v (…, Hkv, D). Fused self-attention: one GEMM for the three."""
        if self.fuse == "qkv" and kv is None:
            nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            q, k, v = self.qkv(x).split((nq, nkv, nkv), dim=-1)
            return q, *self._heads(k, v)
        return self._queries(x), *self._keys_values(x if kv is None else kv)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """(…, E) → (…, Hq·D)."""
        if self.fuse == "qkv":
            return self._fused_rows(x, 0, self.num_heads * self.head_dim)
        return self.q(x)

    def _keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(…, kv_dim) → keys, values (…, Hkv, D) each."""
        if self.fuse is None:
            return self._heads(self.k(src), self.v(src))
        if self.fuse == "qkv":
            start = self.num_heads * self.head_dim
            kv = self._fused_rows(src, start, start + 2 * self.num_kv_heads * self.head_dim)
        else:
            kv = self.kv(src)
        return self._heads(*kv.chunk(2, dim=-1))

    def _heads(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.num_kv_heads, self.head_dim)
        return k.unflatten(-1, shape), v.unflatten(-1, shape)

    def _fused_rows(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output features start:stop of the fused ``qkv`` projection of x: a GEMM with that slice
        of its weight, or (a wrapped projection: LoRA, (IA)³) the wrapper's full output, sliced."""
        proj = self.qkv
        if type(proj) is nn.Linear:
            bias = None if proj.bias is None else proj.bias[start:stop]
            return F.linear(x, proj.weight[start:stop], bias)
        return proj(x)[..., start:stop]

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}"
        for name in ("fuse", "causal", "dropout", "softmax_scale", "backend"):
            value = getattr(self, name)
            if value:
                s += f", {name}={value!r}"
        return s


def _rename_legacy_keys(state_dict: dict, prefix: str, *args) -> None:
    """Load-time hook: ``q_proj``/``k_proj``/``v_proj``/``o_proj`` keys under this module's prefix
    take the current names (``q``/``k``/``v``/``out``)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        head, _, rest = key[len(prefix) :].partition(".")
        if head in LEGACY_NAMES:
            state_dict[f"{prefix}{LEGACY_NAMES[head]}.{rest}"] = state_dict.pop(key)
