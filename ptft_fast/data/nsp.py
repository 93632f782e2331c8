"""Sentence-pair construction for next-sentence prediction (BERT).

Documents are lists of sentences (token-id lists). Pairs are built as in BERT's
``create_instances_from_document``: sentences accumulate into a chunk up to the target length, A is
a random prefix of the chunk and B either the rest of the chunk (label 0, "is next") or sentences
from a random other document (label 1); the decision is a fair coin, so exactly 50% in
expectation (a one-sentence chunk is split inside the sentence instead of forcing "random").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

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
    max_tokens = cfg.max_seq_len - 3
    out: list[dict] = []
    for d, doc in enumerate(documents):
        target = max_tokens if rng.random() >= cfg.short_seq_prob else rng.randint(2, max_tokens)
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
                    other = rng.randrange(len(documents) - 1)
                    other += other >= d  # any document but this one
                    while not documents[other]:
                        other = rng.randrange(len(documents) - 1)
                        other += other >= d
                    odoc = documents[other]
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
