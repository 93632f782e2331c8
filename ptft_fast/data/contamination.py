"""Train/eval contamination: 13-gram overlap of evaluation examples with a corpus (as in GPT-3's
appendix C: an example is "dirty" when any of its word 13-grams occurs in the training data).

Words are lower-cased runs of letters and digits (punctuation and spacing ignored). An example
shorter than ``n`` words is checked with its whole word sequence when it has at least
``min_words`` words, and counted as too short to check otherwise. Memory holds only the
evaluation n-grams; the corpus streams past them once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class ContaminationReport:
    """Which evaluation examples share an n-gram with the corpus, and their share."""

    n: int
    examples: int
    checked: int
    too_short: int
    dirty: list[dict] = field(default_factory=list)  # {"index", "text", "overlapping_ngrams"}

    @property
    def share(self) -> float:
        """Dirty examples / checked examples."""
        return len(self.dirty) / self.checked if self.checked else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "share": self.share}

    def summary(self) -> str:
        lines = [
            f"contamination ({self.n}-gram overlap): {len(self.dirty)} of {self.checked} checked eval examples "
            f"({self.share:.1%}) share an n-gram with the corpus; {self.too_short} too short to check"
        ]
        lines += [
            f"  #{d['index']}: {d['text'][:80]!r} ({d['overlapping_ngrams']} n-grams)"
            for d in self.dirty[:20]
        ]
        if len(self.dirty) > 20:
            lines.append(f"  ... {len(self.dirty) - 20} more in the report file")
        return "\n".join(lines)


def contamination(
    eval_texts: Sequence[str], corpus: Iterable[str], n: int = 13, min_words: int = 8
) -> ContaminationReport:
    """Check every example of ``eval_texts`` against the documents streamed from ``corpus``."""
    owner: dict[tuple[str, ...], list[int]] = {}
    sizes: dict[int, int] = {}
    too_short = 0
    for i, text in enumerate(eval_texts):
        w = words_of(text)
        if len(w) < min(n, min_words):
            too_short += 1
            continue
        k = min(n, len(w))
        sizes.setdefault(k, 0)
        for g in _grams(w, k):
            owner.setdefault(g, []).append(i)
    hits: dict[int, set] = {}
    for doc in corpus:
        w = words_of(doc)
        for k in sizes:
            for g in _grams(w, k):
                for i in owner.get(g, ()):
                    hits.setdefault(i, set()).add(g)
    report = ContaminationReport(n, len(eval_texts), len(eval_texts) - too_short, too_short)
    report.dirty = [
        {"index": i, "text": eval_texts[i], "overlapping_ngrams": len(hits[i])} for i in sorted(hits)
    ]
    return report
