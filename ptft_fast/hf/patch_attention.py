"""The ``ptft_fast`` entry of transformers' ``AttentionInterface``.

transformers models look their attention function up by ``config._attn_implementation`` and
call it as ``fn(module, query, key, value, attention_mask, scaling=..., dropout=...,
**kwargs)`` with q/k/v in (B, H, T, D). We register one function per backend choice under its
own name (so the choice survives gradient-checkpoint recomputation, unlike a context manager),
together with a mask builder for the same name: transformers' SDPA-style boolean masks (True =
attend, or None when a plain causal/bidirectional pattern suffices), except that a padding-only
bidirectional mask stays compact, (B, 1, 1, Tk), and reaches ``ops.attention`` as its
``key_padding_mask`` instead of a dense (B, 1, Tq, Tk) bias.

Sliding-window attention (Mistral, Qwen2, Phi-3) is supported: transformers builds the window
into the mask (a dense boolean one, folded into ``ops.attention``'s bias), or passes no mask only
when the window cannot bind (fewer keys than the window). Attention-logit soft-capping and
attention sinks are refused (:func:`unsupported` at patch time, the function itself at call time).
"""

from __future__ import annotations

import torch

from ptft_fast import ops

UNSUPPORTED_KWARGS = ("softcap", "s_aux")  # attention-logit soft-capping, attention sinks


def implementation_name(backend: str | None) -> str:
    """The attention-implementation name registered for ``backend``: "ptft_fast[_<backend>]"."""
    return "ptft_fast" if backend is None else f"ptft_fast_{backend}"


def build_mask(**kwargs) -> torch.Tensor | None:
    """transformers' mask-interface entry: ``sdpa_mask``, but padding-only bidirectional masks
    (encoders, cross-attention) as (B, 1, 1, Tk) bool instead of expanded to (B, 1, Tq, Tk)."""
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    padding = kwargs.get("attention_mask")
    if (
        kwargs.get("mask_function") is bidirectional_mask_function
        and padding is not None
        and padding.dim() == 2
        and padding.shape[-1] == kwargs.get("kv_length")
        and not kwargs.get("kv_offset")
        and kwargs.get("local_size") is None
    ):
        if kwargs.get("allow_is_bidirectional_skip") and bool(padding.all()):
            return None  # nothing masked, as sdpa_mask decides (the same host read)
        return padding.to(torch.bool)[:, None, None, :]
    return sdpa_mask(**kwargs)


def _mask_to_ops(mask: torch.Tensor, bias: torch.Tensor | None, query: torch.Tensor):
    """A transformers 4-D mask → (key_padding_mask, attn_bias, no_key) for ``ops.attention``.

    mask: bool (True = attend) or additive float, broadcastable to (B, H, Tq, Tk). A bool mask that
    only depends on (batch, key) — (B, 1, 1, Tk) from ``build_mask``, or stored expanded with
    stride 0 over Tq — becomes a (B, Tk) key_padding_mask. Any other bool mask is folded into the
    bias as transformers' SDPA path does, masked scores at the dtype's (finite) minimum; ``no_key``
    (B, Tq, H or 1, 1) then marks the queries that see no key (left padding), whose output is
    zeroed afterwards as SDPA and the ops contract do.
    """
    if mask.dim() != 4:
        raise ValueError(f"ptft_fast attention: expected a 4-D attention mask, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        mask = mask.to(query.dtype)
        return None, (mask if bias is None else bias + mask), None
    batch, keys = query.shape[0], mask.shape[-1]
    if mask.shape[1] == 1 and (mask.shape[2] == 1 or mask.stride(2) == 0):
        return mask[:, 0, 0, :].expand(batch, keys), bias, None
    kept = bias if bias is not None else torch.zeros((), dtype=query.dtype, device=query.device)
    no_key = ~mask.any(dim=-1, keepdim=True).transpose(1, 2)  # (B, Tq, H or 1, 1)
    return None, torch.where(mask, kept, torch.finfo(query.dtype).min), no_key


def make_attention_function(backend: str | None):
    """The transformers attention function that runs ``ops.attention`` on ``backend``."""

    def ptft_fast_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """query: (B, Hq, Tq, D); key, value: (B, Hkv, Tk, D); attention_mask: None, bool
        (True = attend) or additive, broadcastable to (B, Hq, Tq, Tk); position_bias: additive
        (T5), same broadcast. Returns ((B, Tq, Hq, D), None) — no attention weights."""
        for name in UNSUPPORTED_KWARGS:
            if kwargs.get(name) is not None:
                raise NotImplementedError(f"ptft_fast attention does not support {name}={kwargs[name]!r}")
        tq, tk = query.shape[2], key.shape[2]
        window = kwargs.get("sliding_window")
        if window is not None and attention_mask is None and tk > window:
            # transformers encodes the window in the mask it builds; without one it would be lost
            raise NotImplementedError(
                f"ptft_fast attention: sliding_window={window} binds over {tk} keys but no attention mask "
                "carries it (build masks with the model's mask interface)"
            )
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        # As in transformers' SDPA path: a causal layer gets no mask when the pattern is plain causal.
        causal = bool(causal) and tq > 1 and attention_mask is None
        key_padding_mask, bias, no_key = None, position_bias, None
        if attention_mask is not None:
            key_padding_mask, bias, no_key = _mask_to_ops(attention_mask, bias, query)
        elif causal and tk > tq:
            # Prefill into an empty static cache: transformers aligns causal top-left and the keys
            # past Tq are unused slots; drop them (ops.attention aligns bottom-right).
            key, value = key[:, :, :tq], value[:, :, :tq]
            bias = None if bias is None else bias[..., :tq]
        out = ops.attention(
            query.transpose(1, 2),  # (B, Tq, Hq, D)
            key.transpose(1, 2),  # (B, Tk, Hkv, D)
            value.transpose(1, 2),
            causal=causal,
            key_padding_mask=key_padding_mask,
            attn_bias=bias,
            dropout_p=dropout,
            softmax_scale=scaling,
            backend=backend,
        )
        if no_key is not None:
            out = out.masked_fill(no_key, 0.0)
        return out, None

    return ptft_fast_attention


def unsupported(model: torch.nn.Module) -> str | None:
    """Why ``model``'s attention cannot run on ``ops.attention`` (None when it can)."""
    from transformers import PreTrainedModel

    for m in model.modules():
        if not isinstance(m, PreTrainedModel):
            continue
        if not m._can_set_attn_implementation():
            return f"{type(m).__name__} does not call its attention through transformers' AttentionInterface"
        cap = getattr(m.config, "attn_logit_softcapping", None)
        if cap is not None:
            return f"{type(m).__name__} soft-caps its attention logits (attn_logit_softcapping={cap})"
    for name, _ in model.named_parameters():
        if name.rpartition(".")[2] == "sinks":
            return f"attention sinks ({name}) are not supported"
    return None


def register(backend: str | None) -> str:
    """Register the attention and mask functions for ``backend`` (re-registering replaces); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = implementation_name(backend)
    AttentionInterface.register(name, make_attention_function(backend))
    AttentionMaskInterface.register(name, build_mask)
    return name
