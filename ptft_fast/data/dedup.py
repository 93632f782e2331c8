"""Document de-duplication: exact (hash of whitespace-normalized text) and near (MinHash-LSH).

Both are streaming: the first occurrence is kept and later duplicates are dropped.
Near-duplicates use ``datasketch`` (MinHash over word n-gram shingles + an LSH index).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

_WS = re.compile(r"\s+")


def normalized_hash(text: str) -> bytes:
    """SHA-1 of the text with runs of whitespace collapsed and ends stripped."""
    return hashlib.sha1(_WS.sub(" ", text).strip().encode("utf-8")).digest()


class ExactDeduper:
    """Keeps the first document for every normalized-text hash."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def is_duplicate(self, text: str) -> bool:
        """True when an identical (up to whitespace) text was seen before; records it otherwise."""
        h = normalized_hash(text)
        if h in self._seen:
            return True
        self._seen.add(h)
        return False


@dataclass
class NearDedupConfig:
    """MinHash-LSH settings."""

    threshold: float = 0.8  # estimated Jaccard similarity above which a document is a near-duplicate
    num_perm: int = 128  # MinHash permutations
    shingle_size: int = 5  # word n-grams (lower-cased)
    seed: int = 1


class NearDeduper:
    """Drops documents whose shingle Jaccard similarity to a kept document exceeds the threshold."""

    def __init__(self, cfg: NearDedupConfig | None = None) -> None:
        self.cfg = cfg or NearDedupConfig()
        self._lsh = MinHashLSH(threshold=self.cfg.threshold, num_perm=self.cfg.num_perm)
        self._count = 0

    def minhash(self, text: str) -> MinHash:
        """MinHash of the lower-cased word ``shingle_size``-grams of ``text``."""
        words = _WS.sub(" ", text.lower()).strip().split(" ")
        n = self.cfg.shingle_size
        shingles = {" ".join(words[i : i + n]).encode("utf-8") for i in range(max(1, len(words) - n + 1))}
        m = MinHash(num_perm=self.cfg.num_perm, seed=self.cfg.seed)
        m.update_batch(list(shingles))
        return m

    def is_duplicate(self, text: str) -> bool:
        """True when ``text`` is near a kept document; otherwise indexes it and returns False."""
        m = self.minhash(text)
        if self._lsh.query(m):
            return True
        self._lsh.insert(str(self._count), m)
        self._count += 1
        return False


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


class SentenceDeduper:
    """Removes sentences seen earlier in the corpus (whitespace-normalized, case-folded), keeping
    the first occurrence; sentences of fewer than ``min_words`` words (headings, "Yes.") stay.

    Boilerplate repeated across documents (cookie notices, licence lines, navigation) goes, the
    rest of each document stays. Sentences are cut after ``. ! ?`` before an upper-case letter or
    digit; line breaks are kept."""

    def __init__(self, min_words: int = 5) -> None:
        self.min_words = min_words
        self._seen: set[bytes] = set()

    def dedup(self, text: str) -> str:
        """``text`` without its already-seen sentences (may be empty)."""
        kept_lines = []
        for line in text.split("\n"):
            kept = []
            for sentence in _SENTENCE.split(line):
                norm = _WS.sub(" ", sentence).strip().casefold()
                if len(norm.split(" ")) >= self.min_words:
                    h = hashlib.sha1(norm.encode("utf-8")).digest()
                    if h in self._seen:
                        continue
                    self._seen.add(h)
                kept.append(sentence)
            if kept or not line.strip():
                kept_lines.append(" ".join(kept))
        return "\n".join(kept_lines).strip()
