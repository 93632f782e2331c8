"""Document quality filters (Gopher-style heuristics) with thresholds as options.

Each check returns the name of the first rule a document breaks, or ``None`` to keep it. The rule
names are the rows of the preparation report.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_WORD = re.compile(r"\S+")


@dataclass
class FilterConfig:
    """Thresholds of the quality filters; set one to ``None`` to switch its rule off."""

    min_chars: int | None = 50  # shorter documents carry too little context
    max_chars: int | None = 1_000_000  # pathological dumps
    min_words: int | None = 5
    min_alpha_ratio: float | None = 0.6  # alphabetic chars / non-space chars (tables, hex dumps)
    max_symbol_ratio: float | None = 0.1  # ('#' + '...' + '…') / words, as in Gopher
    max_dup_line_frac: float | None = 0.3  # fraction of non-empty lines that repeat an earlier line
    max_dup_ngram_frac: float | None = 0.2  # fraction of word chars inside repeated word n-grams
    ngram_size: int = 5


def alpha_ratio(text: str) -> float:
    """Fraction of non-whitespace characters that are alphabetic (0.0 for an empty text)."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def symbol_ratio(words: list[str]) -> float:
    """Hash and ellipsis symbols per word."""
    if not words:
        return 0.0
    n = sum(w.count("#") + w.count("...") + w.count("…") for w in words)
    return n / len(words)


def dup_line_fraction(text: str) -> float:
    """Fraction of non-empty lines that are an exact repeat of an earlier line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def dup_ngram_fraction(words: list[str], n: int) -> float:
    """Fraction of word characters covered by word n-grams that occur more than once."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


def quality_reason(text: str, cfg: FilterConfig) -> str | None:
    """Name of the first quality rule ``text`` breaks (e.g. ``"too_short"``), or ``None``."""
    n = len(text)
    if cfg.min_chars is not None and n < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and n > cfg.max_chars:
        return "too_long"
    words = _WORD.findall(text)
    if cfg.min_words is not None and len(words) < cfg.min_words:
        return "too_few_words"
    if cfg.min_alpha_ratio is not None and alpha_ratio(text) < cfg.min_alpha_ratio:
        return "low_alpha_ratio"
    if cfg.max_symbol_ratio is not None and symbol_ratio(words) > cfg.max_symbol_ratio:
        return "high_symbol_ratio"
    if cfg.max_dup_line_frac is not None and dup_line_fraction(text) > cfg.max_dup_line_frac:
        return "repeated_lines"
    if (
        cfg.max_dup_ngram_frac is not None
        and dup_ngram_fraction(words, cfg.ngram_size) > cfg.max_dup_ngram_frac
    ):
        return "repeated_ngrams"
    return None
