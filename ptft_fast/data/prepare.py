"""Corpus preparation pipeline: read → language → quality filters → quality classifier → exact
dedup → near dedup → sentence dedup → PII scrub → held-out split → write.

Streaming: documents flow one at a time; only hashes and MinHash signatures are kept in memory.
The output is ``corpus.jsonl`` (training documents, one ``{"text": ...}`` per line), ``eval.jsonl``
(every k-th kept document, held out for evaluation) and ``report.json``, all written atomically.
:class:`PrepareReport` says what each stage removed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ptft_fast.data.corpus import BrokenLine, Document
from ptft_fast.data.dedup import ExactDeduper, NearDedupConfig, NearDeduper, SentenceDeduper
from ptft_fast.data.filters import RULES, FilterConfig, filter_preset, quality_reason
from ptft_fast.data.pii import DEFAULT_REGIONS, scrub_pii
from ptft_fast.data.progress import LiveBar
from ptft_fast.utils.atomic import atomic_open, atomic_write_json

CORPUS_FILE = "corpus.jsonl"
EVAL_FILE = "eval.jsonl"
REPORT_FILE = "report.json"


@dataclass
class PrepareConfig:
    """What the pipeline does; each stage can be switched off."""

    filters: FilterConfig = field(default_factory=lambda: filter_preset("clean"))
    exact_dedup: bool = True
    near_dedup: bool = True
    near: NearDedupConfig = field(default_factory=NearDedupConfig)
    sentence_dedup: bool = False  # drop sentences (>= 5 words) seen earlier in the corpus
    scrub_pii: bool = True
    pii_regions: tuple[str, ...] = DEFAULT_REGIONS  # countries whose national phone formats count
    languages: tuple[str, ...] = ()  # keep only these ISO 639-1 languages (py3langid); () = all
    quality: object | None = None  # a fitted QualityClassifier; None = no classifier filter
    eval_fraction: float = 0.05  # every round(1/f)-th kept document goes to eval.jsonl; 0 = none
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
    docs_eval: int = 0
    txt_splits: dict[str, str] = field(default_factory=dict)  # .txt file → how it was cut ("auto" result)
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
        rows.append(("  of which held out (eval.jsonl)", str(self.docs_eval), "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


def _drop(report: PrepareReport, stage: str, text: str) -> None:
    row = report.stage(stage)
    row.docs_removed += 1
    row.chars_removed += len(text)


def clean_documents(docs: Iterable[Document], cfg: PrepareConfig, report: PrepareReport) -> Iterable[str]:
    """Yield the texts that pass every enabled stage, updating ``report`` as they stream."""
    from ptft_fast.data.langid import LanguageFilter

    language = LanguageFilter(cfg.languages) if cfg.languages else None
    exact = ExactDeduper() if cfg.exact_dedup else None
    near = NearDeduper(cfg.near) if cfg.near_dedup else None
    sentences = SentenceDeduper() if cfg.sentence_dedup else None
    names = ["language"] if language else []
    names += ["filter:" + r for r in RULES] + (["quality_classifier"] if cfg.quality is not None else [])
    names += [
        n for n, on in (("exact_dedup", exact), ("near_dedup", near), ("sentence_dedup", sentences)) if on
    ]
    for name in names:
        report.stage(name)
    pii_total: Counter = Counter(report.pii_replacements)
    for doc in docs:
        text = doc.text
        report.docs_in += 1
        report.chars_in += len(text)
        stage = "language" if language is not None and not language.keeps(text) else None
        if stage is None and (reason := quality_reason(text, cfg.filters)):
            stage = f"filter:{reason}"
        if stage is None and cfg.quality is not None and not cfg.quality.keeps(text):
            stage = "quality_classifier"
        if stage is None and exact is not None and exact.is_duplicate(text):
            stage = "exact_dedup"
        if stage is None and near is not None and near.is_duplicate(text):
            stage = "near_dedup"
        if stage is None and sentences is not None:
            kept = sentences.dedup(text)
            report.stage("sentence_dedup").chars_removed += len(text) - len(kept)
            text = kept
            if not kept:
                report.stage("sentence_dedup").docs_removed += 1
                continue
        if stage is not None:
            _drop(report, stage, text)
            continue
        if cfg.scrub_pii:
            text, counts = scrub_pii(text, cfg.pii_regions)
            if counts:
                report.docs_with_pii += 1
                pii_total.update(counts)
        report.docs_out += 1
        report.chars_out += len(text)
        yield text
    report.pii_replacements = dict(pii_total)


def held_out_every(eval_fraction: float) -> int:
    """Every how many kept documents one is held out (0 = none): round(1 / eval_fraction), ≥ 2."""
    return max(2, round(1 / eval_fraction)) if eval_fraction > 0 else 0


def prepare_corpus(
    docs: Iterable[Document],
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    broken: list[BrokenLine] | None = None,
) -> PrepareReport:
    """Run the pipeline over ``docs`` and write ``out_dir/corpus.jsonl``, ``out_dir/eval.jsonl``
    (every ``held_out_every(cfg.eval_fraction)``-th kept document) and ``out_dir/report.json``.

    broken: the list the reader appends skipped lines to (see ``read_documents(on_broken=...)``);
    it is read after the stream is consumed and stored in the report.
    """
    cfg = cfg or PrepareConfig()
    out = Path(out_dir)
    report = PrepareReport()
    every = held_out_every(cfg.eval_fraction)
    with (
        LiveBar("clean, dedup, scrub", unit="doc", enabled=cfg.progress) as bar,
        atomic_open(out / CORPUS_FILE, "w") as fh,
        atomic_open(out / EVAL_FILE, "w") as eval_fh,
    ):
        for i, text in enumerate(clean_documents(bar.counted(docs), cfg, report)):
            held = every and i % every == every - 1
            report.docs_eval += bool(held)
            (eval_fh if held else fh).write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    report.broken_lines = list(broken or [])
    atomic_write_json(out / REPORT_FILE, report.to_dict())
    return report


def iter_prepared(out_dir: str | os.PathLike, name: str = CORPUS_FILE) -> Iterator[str]:
    """Stream the texts of a prepared ``corpus.jsonl`` (or ``eval.jsonl``)."""
    with open(Path(out_dir) / name, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["text"]


def read_prepared(out_dir: str | os.PathLike) -> list[str]:
    """The texts of a prepared ``corpus.jsonl`` as a list."""
    return list(iter_prepared(out_dir))
