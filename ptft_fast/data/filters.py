"""Document quality filters with thresholds as options, and three named presets.

Each check returns the name of the first rule a document breaks, or ``None`` to keep it. The rule
names are the rows of the preparation report. Presets (:data:`PRESETS`, ``ptft prepare --filters``):

- ``clean`` (default): for text a user brings — titles, definitions, one-line abstracts, notes. No
  length floor; drops only empty documents, pathological dumps, tables/hex dumps (few letters) and
  repeated lines or n-grams.
- ``web``: Gopher's quality and repetition rules (Rae et al. 2021, Table A1) and C4's document
  rules, for crawled pages; docs/prepare_filters.md compares it with datatrove's filters rule by rule.
- ``none``: drops empty documents only.
"""

from __future__ import annotations

import dataclasses
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
    # web-page rules (Gopher / C4), off unless a preset or an option sets them
    max_words: int | None = None  # Gopher: 100,000
    mean_word_len: tuple[float, float] | None = None  # Gopher: mean word length in [3, 10]
    max_bullet_lines_frac: float | None = None  # Gopher: 0.9 of lines starting with a bullet
    max_ellipsis_lines_frac: float | None = None  # Gopher: 0.3 of lines ending with an ellipsis
    min_alpha_words_frac: float | None = None  # Gopher: 0.8 of words hold a letter
    min_stop_words: int | None = None  # Gopher: >= 2 of the, be, to, of, and, that, have, with
    max_dup_line_char_frac: float | None = None  # Gopher: 0.2 of chars in repeated lines
    max_dup_para_frac: float | None = None  # Gopher: 0.3 of paragraphs repeat an earlier one
    min_sentences: int | None = None  # C4: >= 5 sentences on lines ending in terminal punctuation
    c4_markers: bool = False  # C4: drop pages with "lorem ipsum" or a curly bracket


STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_BULLETS = ("•", "-", "*", "‣", "◦", "·")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_TERMINAL = (".", "!", "?", '"', "'")


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


def dup_chars_fraction(parts: list[str], total: int) -> tuple[float, float]:
    """(share of ``parts`` that repeat an earlier one, share of ``total`` chars they hold)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for p in parts:
        if p in seen:
            dup, dup_chars = dup + 1, dup_chars + len(p)
        seen.add(p)
    return (dup / len(parts) if parts else 0.0), (dup_chars / total if total else 0.0)


def c4_sentences(text: str) -> int:
    """Sentences on the lines C4 keeps: lines of >= 3 words ending in terminal punctuation."""
    n = 0
    for line in text.splitlines():
        line = line.strip()
        if len(line.split()) >= 3 and line.endswith(_TERMINAL) and not line.endswith("..."):
            n += max(1, len(_SENTENCE_END.findall(line)))
    return n


def web_reason(text: str, words: list[str], cfg: FilterConfig) -> str | None:
    """The Gopher / C4 web-page rules of ``cfg`` (each off when ``None``), checked lazily in order."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [""]
    n_words = max(len(words), 1)

    def share(flags) -> float:
        return sum(flags) / len(lines)

    checks = (
        ("too_many_words", cfg.max_words, lambda v: len(words) > v),
        ("mean_word_length", cfg.mean_word_len,
         lambda v: not v[0] <= sum(len(w) for w in words) / n_words <= v[1]),
        ("bullet_lines", cfg.max_bullet_lines_frac, lambda v: share(ln.startswith(_BULLETS) for ln in lines) > v),
        ("ellipsis_lines", cfg.max_ellipsis_lines_frac,
         lambda v: share(ln.endswith(("...", "…")) for ln in lines) > v),
        ("few_alpha_words", cfg.min_alpha_words_frac,
         lambda v: sum(any(c.isalpha() for c in w) for w in words) / n_words < v),
        ("few_stop_words", cfg.min_stop_words,
         lambda v: sum(w.lower().strip(".,;:!?\"'") in STOP_WORDS for w in words) < v),
        ("repeated_paragraphs", cfg.max_dup_para_frac,
         lambda v: dup_chars_fraction([p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()], len(text))[0] > v),
        ("repeated_line_chars", cfg.max_dup_line_char_frac, lambda v: dup_chars_fraction(lines, len(text))[1] > v),
        ("c4_markers", cfg.c4_markers or None, lambda v: "{" in text or "lorem ipsum" in text.lower()),
        ("few_sentences", cfg.min_sentences, lambda v: c4_sentences(text) < v),
    )  # fmt: skip
    return next((name for name, value, broken in checks if value is not None and broken(value)), None)


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
    return web_reason(text, words, cfg)


RULES = (  # the report rows, in checking order
    "too_short",
    "too_long",
    "too_few_words",
    "low_alpha_ratio",
    "high_symbol_ratio",
    "repeated_lines",
    "repeated_ngrams",
    "too_many_words",
    "mean_word_length",
    "bullet_lines",
    "ellipsis_lines",
    "few_alpha_words",
    "few_stop_words",
    "repeated_paragraphs",
    "repeated_line_chars",
    "c4_markers",
    "few_sentences",
)
_OFF = dict(min_chars=None, max_dup_line_frac=None, max_dup_ngram_frac=None, max_symbol_ratio=None)
PRESETS = {
    "clean": FilterConfig(min_chars=None, min_words=1, min_alpha_ratio=0.25, max_symbol_ratio=None),
    "web": FilterConfig(
        min_chars=None,
        min_words=50,
        max_words=100_000,
        mean_word_len=(3.0, 10.0),
        min_alpha_ratio=None,
        max_symbol_ratio=0.1,
        max_bullet_lines_frac=0.9,
        max_ellipsis_lines_frac=0.3,
        min_alpha_words_frac=0.8,
        min_stop_words=2,
        max_dup_line_frac=0.3,
        max_dup_line_char_frac=0.2,
        max_dup_para_frac=0.3,
        max_dup_ngram_frac=0.15,
        ngram_size=5,
        min_sentences=5,
        c4_markers=True,
    ),
    "none": FilterConfig(**_OFF, min_words=1, min_alpha_ratio=None),
}


def filter_preset(name: str, **overrides) -> FilterConfig:
    """A copy of preset ``name`` (clean | web | none) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"filters must be one of {'|'.join(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)
