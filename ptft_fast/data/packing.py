"""Packing documents into fixed-length sequences that keep document boundaries.

A packed sequence is a (T,) row of tokens from one or more documents plus ``doc_ids`` (T,) — a
global document id per token, -1 for padding. A document longer than the space left is split and
continues in the next row. :func:`cu_seqlens_from_doc_ids` turns the ids into the varlen attention
form (cumulative segment lengths over the flattened batch), so causal attention never crosses a
document boundary. :class:`PackedStream` is resumable (its state includes the sampler's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ptft_fast.data.sampler import DocRef, ResumableSampler


@dataclass
class PackedSequence:
    """input_ids (T,) int64; doc_ids (T,) int64, -1 on padding."""

    input_ids: np.ndarray
    doc_ids: np.ndarray


def doc_global_id(ref: DocRef) -> int:
    """A unique int per document: shard in the high bits, index in the low 40 bits."""
    return (ref.shard << 40) | ref.doc


class PackedStream:
    """Fills (seq_len,) rows from a sampler's documents, appending ``eos_id`` to each document.

    The last, partial row is padded with ``pad_id`` when the sampler ends.
    """

    def __init__(
        self, sampler: ResumableSampler, seq_len: int, *, eos_id: int | None = None, pad_id: int = 0
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.sampler, self.seq_len, self.eos_id, self.pad_id = sampler, seq_len, eos_id, pad_id
        self._carry: tuple[DocRef, int] | None = None  # document in progress and position in it

    def _doc(self, ref: DocRef) -> np.ndarray:
        toks = np.asarray(self.sampler.shards.document(ref.shard, ref.doc), dtype=np.int64)
        return toks if self.eos_id is None else np.append(toks, self.eos_id)

    def __iter__(self) -> Iterator[PackedSequence]:
        return self

    def __next__(self) -> PackedSequence:
        ids = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        docs = np.full(self.seq_len, -1, dtype=np.int64)
        filled = 0
        while filled < self.seq_len:
            if self._carry is None:
                try:
                    ref, _ = next(self.sampler)
                except StopIteration:
                    break
                self._carry = (ref, 0)
            ref, pos = self._carry
            toks = self._doc(ref)
            take = min(len(toks) - pos, self.seq_len - filled)
            ids[filled : filled + take] = toks[pos : pos + take]
            docs[filled : filled + take] = doc_global_id(ref)
            filled += take
            self._carry = None if pos + take == len(toks) else (ref, pos + take)
        if filled == 0:
            raise StopIteration
        return PackedSequence(ids, docs)

    def state_dict(self) -> dict:
        carry = None if self._carry is None else [self._carry[0].shard, self._carry[0].doc, self._carry[1]]
        return {"sampler": self.sampler.state_dict(), "carry": carry}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        c = state["carry"]
        self._carry = None if c is None else (DocRef(c[0], c[1]), c[2])


def row_segments(doc_ids: np.ndarray) -> np.ndarray:
    """(B,) number of document pieces in each row of (B, T) ``doc_ids`` (-1 = padding): a document
    that continues from the previous row, or into the next, counts in both."""
    doc_ids = np.asarray(doc_ids)
    start = np.ones_like(doc_ids, dtype=bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return (start & (doc_ids >= 0)).sum(axis=1)


def segment_ids(doc_ids: np.ndarray) -> np.ndarray:
    """(B, T) per-row segment index: 0, 0, 1, 1, 1, ... increasing at each document change."""
    doc_ids = np.asarray(doc_ids)
    change = np.ones_like(doc_ids, dtype=bool)
    change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return np.cumsum(change, axis=1) - 1


def cu_seqlens_from_doc_ids(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Varlen boundaries of a packed batch.

    doc_ids: (B, T) — a document id per token (padding runs form their own segment).
    Returns cu_seqlens (S + 1,) int32 over the flattened (B*T) tokens — segments never cross a
    row or a document change — and max_seqlen (int).
    """
    b, t = doc_ids.shape
    change = torch.ones_like(doc_ids, dtype=torch.bool)
    change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    starts = torch.nonzero(change.reshape(-1)).squeeze(1)
    cu = torch.cat([starts, torch.tensor([b * t], device=doc_ids.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max().item()) if len(cu) > 1 else 0


def position_ids_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) positions restarting at 0 at each document start."""
    b, t = doc_ids.shape
    change = torch.ones_like(doc_ids, dtype=torch.bool)
    change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = torch.arange(t, device=doc_ids.device).expand(b, t)
    start = torch.where(change, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def block_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total, total) bool attention mask of the varlen form: causal inside each segment only.

    For tests and the dense reference path; the kernels take ``cu_seqlens`` directly.
    """
    seg = torch.zeros(total, dtype=torch.long)
    seg[cu_seqlens[1:-1].long()] = 1
    seg = seg.cumsum(0)
    same = seg[:, None] == seg[None, :]
    return same & torch.ones(total, total, dtype=torch.bool).tril()
