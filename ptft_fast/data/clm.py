"""Causal LM and prefix LM collators.

Labels follow the Hugging Face convention: ``labels`` is aligned with ``input_ids`` and the model
shifts (logits at t predict labels at t + 1); -100 is ignored.

- :class:`CLMCollator`: padded batches of separate sequences.
- :class:`PackedCLMCollator`: rows from :class:`~ptft_fast.data.packing.PackedStream`; adds
  ``doc_ids``, ``position_ids`` (restart per document), ``cu_seqlens`` / ``max_seqlen`` for varlen
  attention, and sets the label of every document's first token to -100 so no token is ever
  predicted from another document.
- :class:`PrefixLMCollator`: bidirectional attention over a prefix, causal after it; the loss
  covers only the positions after the prefix. Packed rows: one prefix per document
  (:meth:`PrefixLMCollator.collate_documents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ptft_fast.data.collate import (
    IGNORE_INDEX,
    as_id_list,
    attention_mask_from_lengths,
    pad_rows,
    pad_sequences,
)
from ptft_fast.data.packing import PackedSequence, cu_seqlens_from_doc_ids, position_ids_from_doc_ids


@dataclass
class CLMCollator:
    """Sequences of ids → input_ids (B, T), attention_mask (B, T), labels (B, T) (-100 on pad)."""

    pad_id: int
    max_length: int | None = None  # pad to exactly this; default the longest

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        ids = [as_id_list(e) for e in examples]
        input_ids = pad_sequences(ids, self.pad_id, self.max_length)
        attention_mask = attention_mask_from_lengths([len(r) for r in ids], input_ids.shape[1])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX),
        }


@dataclass
class PackedCLMCollator:
    """Packed rows → input_ids, labels, attention_mask, doc_ids, position_ids (all (B, T)),
    cu_seqlens (S + 1,) int32 over the flattened B·T tokens, max_seqlen (0-dim int64)."""

    def __call__(self, rows: Sequence[PackedSequence]) -> dict[str, torch.Tensor]:
        return self.collate_rows(np.stack([r.input_ids for r in rows]), np.stack([r.doc_ids for r in rows]))

    def collate_rows(self, input_ids: np.ndarray, doc_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """The same batch from (B, T) arrays, as :meth:`PackedStream.next_rows` returns them."""
        input_ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
        doc_ids = torch.from_numpy(np.asarray(doc_ids, dtype=np.int64))
        attention_mask = (doc_ids >= 0).long()
        position_ids = position_ids_from_doc_ids(doc_ids)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        labels = labels.masked_fill(position_ids == 0, IGNORE_INDEX)  # never predicted across documents
        cu_seqlens, max_seqlen = cu_seqlens_from_doc_ids(doc_ids)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "doc_ids": doc_ids,
            "position_ids": position_ids,
            "cu_seqlens": cu_seqlens,
            "max_seqlen": torch.tensor(max_seqlen),
        }


@dataclass
class PrefixLMCollator:
    """Sequences → a prefix-LM batch.

    prefix_length: fixed prefix length (clipped to len - 1), or None for uniform in [1, len - 1]
    per example. prefix_fraction: if > 0 (and no prefix_length), the prefix is this fraction of
    each sequence (rounded, within [1, len - 1]) instead of uniform. causal_share: the share of
    sequences drawn as causal-LM ones — a 1-token prefix, every later token scored — the mixture
    of causal and prefix-LM sequences in one batch of UniLM (Dong et al., 2019) and UL2's
    causal/prefix modes (Tay et al., 2022); 0 = all prefix-LM sequences. Output: input_ids, attention_mask, labels (-100 on the prefix and padding),
    prefix_lengths (B,), prefix_mask (B, T) bool — True where attention is bidirectional (the
    prefix); use :func:`prefix_lm_attention_mask` for the dense (B, T, T) form.
    """

    pad_id: int
    prefix_length: int | None = None
    max_length: int | None = None
    seed: int = 0
    prefix_fraction: float = 0.0
    causal_share: float = 0.0

    def __post_init__(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        ids = [np.asarray(e, dtype=np.int64) for e in examples]
        lengths = torch.tensor([len(r) for r in ids])
        return self._finish(pad_sequences(ids, self.pad_id, self.max_length), lengths)

    def collate_rows(self, body: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of ``__call__`` from one array: body (B, L), row b's tokens in
        ``body[b, :lengths[b]]``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        ids = pad_rows(body, lengths, self.pad_id, self.max_length)
        return self._finish(torch.from_numpy(ids), torch.from_numpy(lengths))

    def collate_documents(self, input_ids: np.ndarray, doc_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """Packed rows (B, T) as :meth:`PackedStream.next_rows` returns them → a batch whose
        documents are separate prefix-LM sequences: each document piece of a row (a run of one
        doc id) gets its own prefix — as for one sequence, of its n tokens (n = 1: the token alone,
        nothing scored). Output: input_ids, attention_mask, labels (-100 on every prefix and on
        padding), doc_ids (B, T) for the model's document-aware attention, prefix_mask (B, T) bool
        — True on each document's prefix."""
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
        docs = torch.from_numpy(np.asarray(doc_ids, dtype=np.int64))
        real = docs >= 0
        pos = position_ids_from_doc_ids(docs)  # position inside the document piece (padding: a run)
        piece = (pos == 0).reshape(-1).cumsum(0) - 1  # (B·T,) piece of each token, over the batch
        lengths = torch.zeros(int(piece[-1]) + 1, dtype=torch.int64).index_add_(
            0, piece, torch.ones_like(piece)
        )
        prefix = self._prefix_lengths(lengths.clamp_min(2))  # n = 1: prefix 1
        prefix_mask = (pos.reshape(-1) < prefix[piece]).view(docs.shape) & real
        return {
            "input_ids": ids,
            "attention_mask": real.long(),
            "labels": ids.masked_fill(~real | prefix_mask, IGNORE_INDEX),
            "doc_ids": docs,
            "prefix_mask": prefix_mask,
        }

    def _prefix_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(N,) prefix length per sequence of ``lengths`` (each >= 2): uniform in [1, len - 1], the
        fixed prefix_length, or prefix_fraction of each length, clipped to [1, len - 1]; then
        causal_share of them set to 1 (causal sequences)."""
        if self.prefix_length is not None:
            prefix = torch.clamp(torch.full_like(lengths, self.prefix_length), max=lengths - 1)
        elif self.prefix_fraction > 0:
            prefix = (lengths.double() * self.prefix_fraction).round().long().clamp(1).clamp(max=lengths - 1)
        else:
            u = torch.rand(len(lengths), generator=self._gen)
            prefix = 1 + (u * (lengths - 1).double()).long()
        if self.causal_share > 0:
            causal = torch.rand(len(lengths), generator=self._gen) < self.causal_share
            prefix = prefix.masked_fill(causal, 1)
        return prefix

    def _finish(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        if bool((lengths < 2).any()):
            raise ValueError("prefix LM needs sequences of at least 2 tokens")
        prefix = self._prefix_lengths(lengths)
        t = input_ids.shape[1]
        attention_mask = attention_mask_from_lengths(lengths.tolist(), t)
        prefix_mask = torch.arange(t)[None, :] < prefix[:, None]
        labels = input_ids.masked_fill((attention_mask == 0) | prefix_mask, IGNORE_INDEX)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "prefix_lengths": prefix,
            "prefix_mask": prefix_mask,
        }


def prefix_lm_attention_mask(prefix_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool, True = query i may attend key j: j ≤ i, or j inside the prefix; never padding.

    prefix_mask: (B, T) bool; attention_mask: (B, T) 0/1.
    """
    t = prefix_mask.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None]
    allowed = causal | prefix_mask[:, None, :]
    return allowed & attention_mask.bool()[:, None, :]
