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

    The rows are consecutive ``seq_len`` pieces of one token stream (document, eos, document, ...),
    so a document that does not fit continues in the next row. The last, partial row is padded with
    ``pad_id`` when the sampler ends. :meth:`next_rows` builds many rows at once with array
    operations over blocks of documents (no per-token or per-document Python work).
    """

    def __init__(
        self, sampler: ResumableSampler, seq_len: int, *, eos_id: int | None = None, pad_id: int = 0
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.sampler, self.seq_len, self.eos_id, self.pad_id = sampler, seq_len, eos_id, pad_id
        self._carry: tuple[DocRef, int] | None = None  # document in progress and position in it

    def _gather(
        self, shard: int, docs: np.ndarray, skip: int, room: int
    ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The stream of ``docs`` of ``shard`` (each + eos), from token ``skip`` of the first, cut
        at ``room`` tokens: (ids (m,), global doc ids (m,), full, partial) — m ≤ room, ``full``
        documents emitted to their end, then ``partial`` tokens of ``docs[full]``."""
        shards = self.sampler.shards
        off, tokens = shards.offsets(shard), shards.tokens(shard)
        starts, lengths = off[docs], off[docs + 1] - off[docs]
        seg = lengths + (0 if self.eos_id is None else 1)  # stream tokens per document
        seg[0] -= skip
        ends = np.cumsum(seg)
        full = int(np.searchsorted(ends, room, side="right"))
        used = min(len(docs), full + 1)
        total = min(int(ends[used - 1]), room)
        partial = total - (int(ends[full - 1]) if full else 0) if full < len(docs) else 0
        # document of each output token (counts cut at ``total``: a long document costs only its part)
        which = np.repeat(np.arange(used), np.diff(np.minimum(ends[:used], total), prepend=0))
        src = np.arange(total) - (ends - seg)[which]  # position inside the document
        src[which == 0] += skip
        ids = tokens[np.minimum(starts[which] + src, len(tokens) - 1)].astype(np.int64)
        if self.eos_id is not None:
            ids[src >= lengths[which]] = self.eos_id
        gids = (np.int64(shard) << 40) | docs[which].astype(np.int64)
        return ids, gids, full, partial

    def _block_size(self, tokens_needed: int) -> int:
        """Documents to look at for ``tokens_needed`` stream tokens: twice the expected count
        (from the corpus' mean document length), so one block usually fills the batch."""
        shards = self.sampler.shards
        mean = shards.num_tokens / max(shards.num_docs, 1) + (self.eos_id is not None)
        return max(16, min(tokens_needed, int(2 * tokens_needed / max(mean, 1.0)) + 16))

    def next_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` rows: input_ids (k, seq_len) int64 and doc_ids (k, seq_len) int64 (-1 on
        padding); k < n only when the sampler ends (k = 0: nothing left)."""
        need = n * self.seq_len
        ids = np.full(need, self.pad_id, dtype=np.int64)
        docs = np.full(need, -1, dtype=np.int64)
        filled = 0
        while filled < need:
            if self._carry is not None:  # a document already taken from the sampler
                (ref, skip), shard = self._carry, self._carry[0].shard
                block = np.array([ref.doc], dtype=np.int64)
            else:
                skip = 0
                shard, block = self.sampler.peek(self._block_size(need - filled))
                if not len(block):
                    break
            part, gids, full, partial = self._gather(shard, block, skip, need - filled)
            ids[filled : filled + len(part)] = part
            docs[filled : filled + len(part)] = gids
            filled += len(part)
            if self._carry is None:
                self.sampler.advance(full + (partial > 0))
                self._carry = (DocRef(shard, int(block[full])), partial) if partial else None
            else:
                self._carry = None if full else (self._carry[0], skip + partial)
        rows = -(-filled // self.seq_len)
        shape = (rows, self.seq_len)
        return ids[: rows * self.seq_len].reshape(shape), docs[: rows * self.seq_len].reshape(shape)

    def __iter__(self) -> Iterator[PackedSequence]:
        return self

    def __next__(self) -> PackedSequence:
        ids, docs = self.next_rows(1)
        if not len(ids):
            raise StopIteration
        return PackedSequence(ids[0], docs[0])

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


def framed_doc_ids(doc_ids: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """The doc_ids of rows framed as ``[CLS] tokens [SEP]`` (the MLM collator's rows): (B, width)
    int64 from doc_ids (B, L) (-1 on padding) and each row's token count ``lengths`` (B,) ≥ 1; the
    ``[CLS]`` belongs to the row's first document, the closing ``[SEP]`` to its last, -1 after."""
    doc_ids, lengths = np.asarray(doc_ids), np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.min()) < 1:
        raise ValueError("every framed row needs at least one token")
    inner = width - 2
    if int(lengths.max(initial=0)) > inner:
        raise ValueError(f"a row of {int(lengths.max())} tokens does not fit {width} framed positions")
    rows = np.arange(len(doc_ids))
    out = np.full((len(doc_ids), width), -1, dtype=np.int64)
    keep = min(inner, doc_ids.shape[1])
    inside = np.arange(keep)[None, :] < lengths[:, None]
    out[:, 1 : 1 + keep] = np.where(inside, doc_ids[:, :keep], -1)
    if len(rows):
        out[:, 0] = doc_ids[:, 0]
        out[rows, lengths + 1] = doc_ids[rows, lengths - 1]
    return out


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
