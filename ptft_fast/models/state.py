"""Data passed between model parts: KV cache, padding-free packing, model outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ptft_fast.ops.reference import varlen_positions

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, Tk, H, D) each


@dataclass
class KVCache:
    """Keys/values of past positions for incremental decoding, one entry per decoder layer.

    ``self_attn[i]`` grows by the new positions every step; ``cross_attn[i]`` holds the projected
    encoder memory (computed once, on the first step).
    """

    self_attn: list[KV | None] = field(default_factory=list)
    cross_attn: list[KV | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of cached positions (0 when empty)."""
        first = self.self_attn[0] if self.self_attn else None
        return 0 if first is None else first[0].shape[1]


@dataclass
class ModelOutput:
    """What a model's forward returns; the per-layer fields are filled only when asked for
    (``output_hidden_states`` / ``output_attentions``, transformers' names and conventions)."""

    loss: torch.Tensor | None = None  # scalar mean loss over labeled tokens
    logits: torch.Tensor | None = None  # (B, T, V); None when only the loss was asked for
    hidden_states: torch.Tensor | None = None  # (B, T, C) last (decoder) layer, after the final norm
    nsp_logits: torch.Tensor | None = None  # (B, 2) next-sentence prediction (BERT pre-training)
    encoder_hidden_states: torch.Tensor | None = None  # (B, S, C) encoder-decoder models
    cache: KVCache | None = None  # with use_cache=True
    # output_hidden_states=True: the embeddings' output and every layer's, (B, T, C) each, N + 1
    # in all as transformers gives them (the last after the final norm where the model has one)
    all_hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None  # output_attentions=True: (B, H, T, Tk) per layer
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # encoder-decoder: (B, H, T, S) per layer
    encoder_all_hidden_states: tuple[torch.Tensor, ...] | None = (
        None  # encoder-decoder, like all_hidden_states
    )
    encoder_attentions: tuple[torch.Tensor, ...] | None = None  # encoder-decoder: (B, H, S, S) per layer


@dataclass
class Packing:
    """Padding-free layout of a padded batch: the tokens where attention_mask is True, packed.

    indices: (total,) flat positions in (B * T); cu_seqlens: (S + 1,) int32 prefix sums of the
    sequence lengths — one sequence per row (:meth:`from_mask`) or per document run in a row
    (:meth:`from_documents`).
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch: int
    seqlen: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Packing:
        mask = attention_mask.bool()
        lengths = mask.sum(dim=1, dtype=torch.int32)
        cu = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        indices = mask.reshape(-1).nonzero().squeeze(1)
        return cls(indices, cu, max(int(lengths.max()), 1), mask.shape[0], mask.shape[1])

    @classmethod
    def from_documents(cls, doc_ids: torch.Tensor) -> Packing:
        """One sequence per run of equal document ids in a row: doc_ids (B, T) int, < 0 on
        padding (dropped). A document cut by a row's end is one sequence in each row. Host reads:
        the token count and the longest run."""
        mask = doc_ids >= 0
        flat = doc_ids.reshape(-1)
        indices = mask.reshape(-1).nonzero().squeeze(1)
        docs, rows = flat.index_select(0, indices), indices // doc_ids.shape[1]
        start = torch.ones_like(docs, dtype=torch.bool)
        start[1:] = (docs[1:] != docs[:-1]) | (rows[1:] != rows[:-1])
        starts = start.nonzero().squeeze(1)
        cu = torch.cat([starts, starts.new_tensor([indices.numel()])]).to(torch.int32)
        longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 1
        return cls(indices, cu, max(longest, 1), doc_ids.shape[0], doc_ids.shape[1])

    def varlen_args(self, keys: Packing | None = None) -> dict:
        """``cu_seqlens_q/k`` and ``max_seqlen_q/k`` for attention from these tokens (the queries)
        to ``keys``' tokens (None: these, self-attention)."""
        keys = self if keys is None else keys
        return {
            "cu_seqlens_q": self.cu_seqlens,
            "cu_seqlens_k": keys.cu_seqlens,
            "max_seqlen_q": self.max_seqlen,
            "max_seqlen_k": keys.max_seqlen,
        }

    def select(self, keep: torch.Tensor) -> Packing:
        """The tokens of this packing where ``keep`` (B, T) bool is True, as queries grouped by this
        packing's sequences (a sequence with none kept stays, empty): the layout of attention from
        the kept tokens to all of theirs. Host read: the longest kept run."""
        kept = self.unpad(keep)
        seq, _ = self.token_sequences()
        counts = torch.bincount(seq[kept], minlength=self.cu_seqlens.numel() - 1)
        cu = F.pad(torch.cumsum(counts, 0), (1, 0)).to(torch.int32)
        longest = int(counts.max()) if counts.numel() else 1
        return Packing(self.indices[kept], cu, max(longest, 1), self.batch, self.seqlen)

    def token_sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence index, position within it) of each packed token, (total,) int64 each."""
        return varlen_positions(self.cu_seqlens, self.indices.numel())

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) → (total, ...)."""
        return x.reshape(self.batch * self.seqlen, *x.shape[2:]).index_select(0, self.indices)

    def repad(self, x: torch.Tensor) -> torch.Tensor:
        """(total, ...) → (B, T, ...) with zeros at padding."""
        out = x.new_zeros(self.batch * self.seqlen, *x.shape[1:]).index_copy(0, self.indices, x)
        return out.view(self.batch, self.seqlen, *x.shape[1:])


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position of each token within its run of equal document ids in the row."""
    t = doc_ids.shape[1]
    idx = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return idx - torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
