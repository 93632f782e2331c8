"""Decoder-only model: pre-norm GPT-2 (causal, learned positions, tied LM head, KV cache).

The same model is a plain causal LM or a prefix LM (``prefix_mask``: attention bidirectional over
a prefix, causal after it), over padded rows or rows of packed documents (``doc_ids``: attention
within each document, padding-free, positions restarting per document).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast.models.blocks import (
    Layer,
    effective_mask,
    init_weights,
    make_norm,
    run_layers,
)
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.heads import IGNORE_INDEX, LMHead
from ptft_fast.models.state import KVCache, ModelOutput, Packing, document_positions
from ptft_fast.ops.graph_mode import in_graph


def prefix_ends(prefix_mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64: one past the last True of each row of prefix_mask (B, T) — the prefix length in
    key positions that ``ops.attention`` takes (left padding before the prefix is masked anyway)."""
    t = prefix_mask.shape[-1]
    steps = torch.arange(1, t + 1, device=prefix_mask.device)
    return (prefix_mask.to(torch.int64) * steps).amax(-1)


def document_targets(labels: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) label each position predicts: labels[t + 1], IGNORE_INDEX where token t + 1 starts
    another document, is padding, or is past the row's end: no token is scored across documents."""
    other = (doc_ids[:, 1:] != doc_ids[:, :-1]) | (doc_ids[:, 1:] < 0)
    nxt = labels[:, 1:].masked_fill(other, IGNORE_INDEX)
    return F.pad(nxt, (0, 1), value=IGNORE_INDEX)


def document_bias(doc_ids: torch.Tensor, prefix_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, T, T) float32 additive mask, 0 where query i may attend key j, -inf elsewhere: same
    document and (j <= i, or j in the document's prefix). The dense form of the document path, for
    graph mode (no host reads) and per-layer outputs; every query sees at least itself."""
    t = doc_ids.shape[1]
    i = torch.arange(t, device=doc_ids.device)
    seen = (i[None, :] <= i[:, None])[None]  # (1, T, T)
    if prefix_mask is not None:
        seen = seen | prefix_mask.bool()[:, None, :]
    allowed = (doc_ids[:, :, None] == doc_ids[:, None, :]) & seen
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=doc_ids.device)
    return bias.masked_fill(~allowed, float("-inf"))[:, None]


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
        self.final_norm = make_norm(c, config.norm_eps)
        self.lm_head = LMHead(config)
        init_weights(self, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
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

        prefix_mask: (B, past + T) bool, True on the tokens attended bidirectionally (prefix LM):
        each row's prefix — or, with doc_ids, each document's — is its first tokens (the prompt);
        every query sees the whole prefix, and the rest is causal. None: a plain causal LM.

        doc_ids: (B, T) int, the document of each token (< 0: padding) for rows of packed
        documents: attention stays within each document (the varlen form, padding-free; in graph
        mode an equivalent dense mask), positions restart at each document (unless position_ids
        are given), and no token is scored against the next document's first token. Without a
        KV cache.

        ``cache`` holds the keys/values of earlier positions (``cache.length`` of them).
        Logits are computed when there are no labels or ``return_logits=True``.
        ``output_hidden_states`` / ``output_attentions``: also return the embeddings' and every
        layer's output (``all_hidden_states``, N + 1 tensors (B, T, C), the last after the final
        norm) and the attention probabilities (``attentions``, (B, H, T, past + T) per layer).
        """
        past = cache.length if cache is not None else 0
        total = past + input_ids.shape[1]
        if attention_mask is not None and attention_mask.shape[-1] != total:
            raise ValueError(
                f"gpt2: attention_mask must be (B, past + T) = (B, {total}), got {tuple(attention_mask.shape)}"
            )
        if prefix_mask is not None and prefix_mask.shape != (input_ids.shape[0], total):
            raise ValueError(
                f"gpt2: prefix_mask must be (B, past + T) = {(input_ids.shape[0], total)}, "
                f"got {tuple(prefix_mask.shape)}"
            )
        if return_logits is None:
            return_logits = labels is None
        states = [] if output_hidden_states else None
        attentions = [] if output_attentions else None
        if doc_ids is not None:
            if cache is not None or use_cache:
                raise ValueError(
                    "gpt2: doc_ids (rows of packed documents) cannot be combined with a KV cache"
                )
            return self._forward_documents(
                input_ids, attention_mask, labels, position_ids, prefix_mask, doc_ids, return_logits, states,
                attentions,
            )  # fmt: skip
        if position_ids is None:
            position_ids = self._default_positions(attention_mask, past, total, input_ids.device)
        else:
            self._check_positions(position_ids, input_ids.shape)
        x = self._embed(input_ids, position_ids)
        x, new_cache = run_layers(
            self.layers,
            x,
            checkpointing=self.config.gradient_checkpointing,
            cache=cache,
            use_cache=use_cache,
            causal=True,
            key_padding_mask=effective_mask(attention_mask),
            prefix_lengths=None if prefix_mask is None else prefix_ends(prefix_mask),
            hidden_states=states,
            attentions=attentions,
        )
        h = self.final_norm(x)
        weight = self.embed_tokens.weight
        loss = self.lm_head.loss(h, weight, labels, shift=True) if labels is not None else None
        logits = self.lm_head.logits(h, weight) if return_logits else None
        return self._output(loss, logits, h, states, attentions, new_cache)

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        if self.training and self.config.dropout > 0.0:
            x = F.dropout(x, self.config.dropout, training=True)
        return x

    @staticmethod
    def _output(loss, logits, h, states, attentions, cache=None) -> ModelOutput:
        return ModelOutput(
            loss=loss,
            logits=logits,
            hidden_states=h,
            cache=cache,
            all_hidden_states=None if states is None else (*states, h),
            attentions=None if attentions is None else tuple(attentions),
        )

    def _forward_documents(
        self, input_ids, attention_mask, labels, position_ids, prefix_mask, doc_ids, return_logits, states,
        attentions,
    ) -> ModelOutput:  # fmt: skip
        """Rows of packed documents (see ``forward``'s doc_ids): the varlen path, or the dense
        document mask in graph mode and when per-layer outputs are asked for (padded form)."""
        if doc_ids.shape != input_ids.shape or doc_ids.dtype.is_floating_point:
            raise ValueError(
                f"gpt2: doc_ids must be an integer tensor of input_ids' shape {tuple(input_ids.shape)}, "
                f"got {doc_ids.dtype} {tuple(doc_ids.shape)}"
            )
        if attention_mask is not None:
            doc_ids = doc_ids.masked_fill(~attention_mask.bool(), -1)
        if position_ids is None:
            self._default_positions(None, 0, input_ids.shape[1], input_ids.device)  # checks the length
            position_ids = document_positions(doc_ids)
        else:
            self._check_positions(position_ids, input_ids.shape)
        targets = None if labels is None else document_targets(labels, doc_ids)
        weight = self.embed_tokens.weight
        kw = dict(checkpointing=self.config.gradient_checkpointing, causal=True, hidden_states=states)
        if in_graph() or states is not None or attentions is not None:
            if prefix_mask is not None:  # the dense mask holds the causal part too
                kw["causal"] = False
            bias = document_bias(doc_ids, prefix_mask)
            x, _ = run_layers(
                self.layers, self._embed(input_ids, position_ids), attn_bias=bias, attentions=attentions, **kw
            )
            h = self.final_norm(x)
            loss = None if targets is None else self.lm_head.loss(h, weight, targets)
            logits = self.lm_head.logits(h, weight) if return_logits else None
            return self._output(loss, logits, h, states, attentions)
        packing = Packing.from_documents(doc_ids)
        if packing.indices.numel() == 0:
            raise ValueError("gpt2: doc_ids marks every token as padding (< 0); nothing to run")
        if prefix_mask is not None:  # each document's prefix length, in its own key positions
            seq, pos = packing.token_sequences()
            ends = (pos + 1) * packing.unpad(prefix_mask.bool())
            kw["prefix_lengths"] = ends.new_zeros(packing.cu_seqlens.numel() - 1).scatter_reduce_(
                0, seq, ends, "amax"
            )
        x = self._embed(packing.unpad(input_ids), packing.unpad(position_ids))  # (total, C)
        x, _ = run_layers(self.layers, x, packing=packing, **kw)
        h = self.final_norm(x)
        loss = None if targets is None else self.lm_head.loss(h, weight, packing.unpad(targets))
        h = packing.repad(h)
        logits = self.lm_head.logits(h, weight) if return_logits else None
        return self._output(loss, logits, h, None, None)

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
