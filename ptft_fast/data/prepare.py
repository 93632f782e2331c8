"""Corpus preparation pipeline: read → quality filters → exact dedup → near dedup → PII scrub → write.

Streaming: documents flow one at a time; only hashes and MinHash signatures are kept in memory.
The output is ``corpus.jsonl`` (one ``{"text": ...}`` per line) plus ``report.json``, both written
atomically. :class:`PrepareReport` says what each stage removed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ptft_fast.data.corpus import BrokenLine, Document
from ptft_fast.data.dedup import ExactDeduper, NearDedupConfig, NearDeduper
from ptft_fast.data.filters import FilterConfig, quality_reason
from ptft_fast.data.pii import scrub_pii
from ptft_fast.data.progress import LiveBar
from ptft_fast.utils.atomic import atomic_open, atomic_write_json

CORPUS_FILE = "corpus.jsonl"
REPORT_FILE = "report.json"


@dataclass
class PrepareConfig:
    """What the pipeline does; each stage can be switched off."""

    filters: FilterConfig = field(default_factory=FilterConfig)
    exact_dedup: bool = True
    near_dedup: bool = True
    near: NearDedupConfig = field(default_factory=NearDedupConfig)
    scrub_pii: bool = True
    progress: bool = True


@dataclass
class StageStats:
    """One row of the report: documents and characters a stage removed."""

    stage: str
    docs_removed: int = 0
    chars_removed: int = 0


@dataclass
class PrepareReport:
    """What the pipeline read, removed and wrote."""

    docs_in: int = 0
    chars_in: int = 0
    docs_out: int = 0
    chars_out: int = 0
    stages: list[StageStats] = field(default_factory=list)
    pii_replacements: dict[str, int] = field(default_factory=dict)
    docs_with_pii: int = 0
    broken_lines: list[BrokenLine] = field(default_factory=list)

    def stage(self, name: str) -> StageStats:
        """The row for ``name`` (created on first use, in pipeline order)."""
        for s in self.stages:
            if s.stage == name:
                return s
        s = StageStats(name)
        self.stages.append(s)
        return s

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table of the stages, for the terminal."""
        rows = [("stage", "docs removed", "chars removed")]
        rows.append(("read: broken lines skipped", str(len(self.broken_lines)), "-"))
        rows += [(s.stage, str(s.docs_removed), str(s.chars_removed)) for s in self.stages]
        pii = ", ".join(f"{k}={v}" for k, v in sorted(self.pii_replacements.items())) or "none"
        rows.append((f"pii scrubbed ({pii})", f"0 ({self.docs_with_pii} docs edited)", "-"))
        rows.append(("total in", str(self.docs_in), str(self.chars_in)))
        rows.append(("total out", str(self.docs_out), str(self.chars_out)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


def clean_documents(docs: Iterable[Document], cfg: PrepareConfig, report: PrepareReport) -> Iterable[str]:
    """Yield the texts that pass every enabled stage, updating ``report`` as they stream."""
    exact = ExactDeduper() if cfg.exact_dedup else None
    near = NearDeduper(cfg.near) if cfg.near_dedup else None
    for name in ("filter:" + r for r in _FILTER_RULES):
        report.stage(name)
    if exact:
        report.stage("exact_dedup")
    if near:
        report.stage("near_dedup")
    pii_total: Counter = Counter(report.pii_replacements)
    for doc in docs:
        text = doc.text
        report.docs_in += 1
        report.chars_in += len(text)
        reason = quality_reason(text, cfg.filters)
        stage = f"filter:{reason}" if reason else None
        if stage is None and exact is not None and exact.is_duplicate(text):
            stage = "exact_dedup"
        if stage is None and near is not None and near.is_duplicate(text):
            stage = "near_dedup"
        if stage is not None:
            row = report.stage(stage)
            row.docs_removed += 1
            row.chars_removed += len(text)
            continue
        if cfg.scrub_pii:
            text, counts = scrub_pii(text)
            if counts:
                report.docs_with_pii += 1
                pii_total.update(counts)
        report.docs_out += 1
        report.chars_out += len(text)
        yield text
    report.pii_replacements = dict(pii_total)


_FILTER_RULES = (
    "too_short",
    "too_long",
    "too_few_words",
    "low_alpha_ratio",
    "high_symbol_ratio",
    "repeated_lines",
    "repeated_ngrams",
)


def prepare_corpus(
    docs: Iterable[Document],
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    broken: list[BrokenLine] | None = None,
) -> PrepareReport:
    """Run the pipeline over ``docs`` and write ``out_dir/corpus.jsonl`` and ``out_dir/report.json``.

    broken: the list the reader appends skipped lines to (see ``read_documents(on_broken=...)``);
    it is read after the stream is consumed and stored in the report.
    """
    cfg = cfg or PrepareConfig()
    out = Path(out_dir)
    report = PrepareReport()
    with (
        LiveBar("clean, dedup, scrub", unit="doc", enabled=cfg.progress) as bar,
        atomic_open(out / CORPUS_FILE, "w") as fh,
    ):
        for text in clean_documents(bar.counted(docs), cfg, report):
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    report.broken_lines = list(broken or [])
    atomic_write_json(out / REPORT_FILE, report.to_dict())
    return report


def iter_prepared(out_dir: str | os.PathLike) -> Iterator[str]:
    """Stream the texts of a prepared ``corpus.jsonl``."""
    with open(Path(out_dir) / CORPUS_FILE, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["text"]


def read_prepared(out_dir: str | os.PathLike) -> list[str]:
    """The texts of a prepared ``corpus.jsonl`` as a list."""
    return list(iter_prepared(out_dir))
