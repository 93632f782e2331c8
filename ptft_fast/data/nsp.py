"""Sentence-pair construction for next-sentence prediction (BERT).

Documents are lists of sentences (token-id lists). Pairs are built as in BERT's
``create_instances_from_document``: sentences accumulate into a chunk up to the target length, A is
a random prefix of the chunk and B either the rest of the chunk (label 0, "is next") or sentences
from a random other document (label 1); the decision is a fair coin, so exactly 50% in
expectation (a one-sentence chunk is split inside the sentence instead of forcing "random").
:class:`NSPStream` builds the pairs from token shards for ``ptft pretrain --objective mlm+nsp``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Split on sentence-final punctuation followed by a capital/digit, and on blank lines."""
    return [s.strip() for s in _SENT_END.split(text) if s.strip()]


@dataclass
class NSPConfig:
    max_seq_len: int = 128  # including [CLS] and two [SEP]
    short_seq_prob: float = 0.1  # sometimes use a shorter target length (BERT)
    random_next_prob: float = 0.5
    seed: int = 0


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def document_pairs(
    doc: list[list[int]],
    random_document,
    cls_id: int,
    sep_id: int,
    cfg: NSPConfig,
    rng: random.Random,
) -> list[dict]:
    """The pairs of one document (a list of sentences of token ids), BERT's way (module docstring).

    random_document: ``rng -> list of sentences`` of a document other than ``doc`` (for the
    "random next" half). Returns dicts as :func:`build_nsp_examples` does."""
    doc = [s for s in doc if s]
    max_tokens = cfg.max_seq_len - 3
    target = max_tokens if rng.random() >= cfg.short_seq_prob else rng.randint(2, max_tokens)
    out: list[dict] = []
    chunk: list[list[int]] = []
    size = 0
    i = 0
    while i < len(doc):
        chunk.append(doc[i])
        size += len(doc[i])
        if i == len(doc) - 1 or size >= target:
            if len(chunk) == 1 and len(chunk[0]) < 2:
                chunk, size = [], 0
                i += 1
                continue
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            if rng.random() < cfg.random_next_prob:
                label = 1
                odoc = random_document(rng)
                start = rng.randrange(len(odoc))
                b: list[int] = []
                for s in odoc[start:]:
                    b.extend(s)
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end  # the unused sentences start the next chunk
            else:
                label = 0
                if len(chunk) >= 2:
                    b = [t for s in chunk[a_end:] for t in s]
                else:
                    cut = rng.randint(1, len(a) - 1)
                    a, b = a[:cut], a[cut:]
            _truncate_pair(a, b, max_tokens, rng)
            if a and b:
                out.append(
                    {
                        "input_ids": [cls_id, *a, sep_id, *b, sep_id],
                        "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                        "next_sentence_label": label,
                    }
                )
            chunk, size = [], 0
        i += 1
    return out


def build_nsp_examples(
    documents: list[list[list[int]]], cls_id: int, sep_id: int, cfg: NSPConfig | None = None
) -> list[dict]:
    """Pairs from ``documents`` (each a list of sentences of token ids).

    Returns dicts with ``input_ids`` ([CLS] A [SEP] B [SEP]), ``token_type_ids`` (0 on
    [CLS] A [SEP], 1 on B [SEP]) and ``next_sentence_label`` (0 = next, 1 = random).
    """
    cfg = cfg or NSPConfig()
    if sum(1 for doc in documents if any(doc)) < 2:
        raise ValueError(f"NSP needs at least 2 documents for random next sentences, got {len(documents)}")
    rng = random.Random(cfg.seed)
    documents = [[s for s in doc if s] for doc in documents]
    out: list[dict] = []
    for d, doc in enumerate(documents):

        def other(rng: random.Random, d: int = d) -> list[list[int]]:
            while True:  # any non-empty document but this one
                k = rng.randrange(len(documents) - 1)
                k += k >= d
                if documents[k]:
                    return documents[k]

        out += document_pairs(doc, other, cls_id, sep_id, cfg, rng)
    return out


def token_sentences(tokens: np.ndarray, sentence_end: np.ndarray) -> list[list[int]]:
    """A tokenized document cut after every sentence-end token (``sentence_end``: (V,) bool);
    a trailing fragment is a sentence too."""
    tokens = np.asarray(tokens, dtype=np.int64)
    cuts = np.flatnonzero(sentence_end[tokens]) + 1
    return [p.tolist() for p in np.split(tokens, cuts[cuts < len(tokens)]) if len(p)]


class NSPStream:
    """Endless, resumable NSP pairs from token shards: the documents of ``sampler`` in its order,
    cut into sentences at ``sentence_end`` tokens, each made into pairs by :func:`document_pairs`
    (B of a "random" pair from a uniformly drawn other document of the shards).

    A document's pairs are a function of (seed, epoch, shard, document), so a pass over the
    corpus in another epoch gives other pairs (BERT's duplication with new choices), and the
    state is the sampler's position plus the pairs already taken from the current document."""

    def __init__(self, sampler, sentence_end: np.ndarray, cls_id: int, sep_id: int, cfg: NSPConfig):
        shards = sampler.shards
        if shards.num_docs < 2:
            raise ValueError(
                f"NSP needs at least 2 documents for random next sentences, got {shards.num_docs}"
            )
        self.sampler, self.sentence_end, self.cls_id, self.sep_id, self.cfg = (
            sampler, sentence_end, cls_id, sep_id, cfg,
        )  # fmt: skip
        self._first = np.cumsum([0] + [shards.shard_num_docs(s) for s in range(shards.num_shards)])
        self._doc: tuple[int, int, int] | None = None  # (epoch, shard, doc) of the pending pairs
        self._pairs: list[dict] = []
        self._used = 0

    def _sentences(self, shard: int, doc: int) -> list[list[int]]:
        return token_sentences(self.sampler.shards.document(shard, doc), self.sentence_end)

    def _make_pairs(self, key: tuple[int, int, int]) -> list[dict]:
        _, shard, doc = key
        here = int(self._first[shard]) + doc
        total = int(self._first[-1])

        def other(rng: random.Random) -> list[list[int]]:
            for _ in range(100):
                k = rng.randrange(total - 1)
                k += k >= here
                s = int(np.searchsorted(self._first, k, side="right")) - 1
                sentences = self._sentences(s, k - int(self._first[s]))
                if sentences:
                    return sentences
            raise ValueError("NSP: no non-empty other document found in 100 draws")

        rng = random.Random(f"{self.cfg.seed}/{key[0]}/{shard}/{doc}")
        return document_pairs(self._sentences(shard, doc), other, self.cls_id, self.sep_id, self.cfg, rng)

    def next_pairs(self, n: int) -> list[dict]:
        """The next ``n`` pairs (fewer only when a finite sampler ends)."""
        out: list[dict] = []
        while len(out) < n:
            if self._used >= len(self._pairs):
                shard, docs = self.sampler.peek(1)
                if not len(docs):
                    break
                self.sampler.advance(1)
                self._doc = (self.sampler.epoch, shard, int(docs[0]))
                self._pairs, self._used = self._make_pairs(self._doc), 0
            take = self._pairs[self._used : self._used + n - len(out)]
            out += take
            self._used += len(take)
        return out

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "doc": self._doc, "used": self._used}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self._doc = None if state["doc"] is None else tuple(state["doc"])
        self._pairs = [] if self._doc is None else self._make_pairs(self._doc)
        self._used = state["used"]
