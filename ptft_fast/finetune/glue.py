"""GLUE task presets: each task's columns, labels and metrics, its submission file, and the GLUE
score (Wang et al., 2019).

A preset reads the task's files as GLUE distributes them (TSV with its own column names; CoLA's
train/dev files have no header row) or as Hugging Face ``datasets`` exports them (JSONL/CSV with
``sentence``/``premise``/... columns and integer labels). Metrics per task: Matthews correlation
for CoLA, F1 and accuracy for MRPC and QQP, Pearson and Spearman correlation for STS-B, matched and
mismatched accuracy for MNLI, accuracy for the others. A task's score is the mean of its metrics,
the GLUE score the mean of the task scores (all as fractions here; the leaderboard shows × 100).
Submission files: ``<Name>.tsv`` with the header ``index<TAB>prediction`` and the test file's index
column; MNLI's matched and mismatched test sets give ``MNLI-m.tsv`` and ``MNLI-mm.tsv``, and the
diagnostic set, predicted by the MNLI model, ``AX.tsv``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ptft_fast.finetune.metrics import binary_f1, classification_metrics
from ptft_fast.finetune.readers import Columns, DataError, Example, read_examples


@dataclass(frozen=True)
class GlueTask:
    name: str  # preset name: cola, sst2, ...
    submission: str  # submission file stem: CoLA, SST-2, ...
    kind: str  # "cls" or "reg"
    columns: tuple[Columns, ...]  # GLUE's TSV columns first, then Hugging Face datasets' names
    labels: tuple[str, ...] | None  # label names as GLUE's files write them (cls)
    metrics: tuple[str, ...]  # averaged into the task's score
    positive: str | None = None  # the class F1 is computed for (MRPC, QQP)
    hf_labels: tuple[str, ...] | None = None  # names of the datasets export's integer labels
    headerless: tuple[str, ...] | None = None  # column names of header-less files (CoLA train/dev)


_PAIR = Columns("sentence1", "sentence2", "label")
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
TASKS = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", "cls", (Columns("sentence", None, "label"),), _BINARY, ("mcc",),
                 hf_labels=_BINARY, headerless=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", "SST-2", "cls", (Columns("sentence", None, "label"),), _BINARY, ("accuracy",),
                 hf_labels=_BINARY),
        GlueTask("mrpc", "MRPC", "cls", (Columns("#1 String", "#2 String", "Quality"), _PAIR), _BINARY,
                 ("f1", "accuracy"), positive="1", hf_labels=_BINARY),
        GlueTask("qqp", "QQP", "cls", (Columns("question1", "question2", "is_duplicate"),
                                       Columns("question1", "question2", "label")), _BINARY,
                 ("f1", "accuracy"), positive="1", hf_labels=_BINARY),
        GlueTask("stsb", "STS-B", "reg", (Columns("sentence1", "sentence2", "score"), _PAIR), None,
                 ("pearson", "spearman")),
        GlueTask("mnli", "MNLI", "cls", (Columns("sentence1", "sentence2", "gold_label"),
                                         Columns("premise", "hypothesis", "label")),
                 ("contradiction", "entailment", "neutral"), ("accuracy", "accuracy_mm"),
                 hf_labels=("entailment", "neutral", "contradiction")),
        GlueTask("qnli", "QNLI", "cls", (Columns("question", "sentence", "label"),), _NLI2, ("accuracy",),
                 hf_labels=_NLI2),
        GlueTask("rte", "RTE", "cls", (_PAIR,), _NLI2, ("accuracy",), hf_labels=_NLI2),
        GlueTask("wnli", "WNLI", "cls", (_PAIR,), _BINARY, ("accuracy",), hf_labels=_BINARY),
    )
}  # fmt: skip
INDEX_COLUMNS = ("index", "id", "idx")  # a test file's example id, in GLUE's files or the export


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".jsonl", ".json"):
            import json

            line = f.readline()
            return list(json.loads(line)) if line.strip() else []
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        return next(csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE), [])


def layout(task: GlueTask, path: str | Path) -> tuple[Columns, tuple[str, ...] | None]:
    """(columns, field names of a header-less file or None) of one of ``task``'s files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    header = _header(path)
    for cols in task.columns:
        if cols.text in header and (cols.text_pair is None or cols.text_pair in header):
            return cols, None
    if task.headerless and len(header) == len(task.headerless):
        return task.columns[0], task.headerless
    expected = " or ".join(str([c for c in (x.text, x.text_pair) if c]) for x in task.columns)
    raise DataError(f"{path}:1: not a GLUE {task.name} file: columns {header}, expected {expected}")


def read(task: GlueTask, path: str | Path) -> list[Example]:
    """A GLUE file's examples, labels as GLUE names them (None in test files: no label column, or
    the export's -1)."""
    cols, fieldnames = layout(task, path)
    examples = read_examples(path, cols, fieldnames=fieldnames)
    for e in examples:
        if e.label is None or e.label.strip() in ("", "-1"):
            e.label = None
        elif task.kind == "reg":
            try:
                e.label = float(e.label)
            except ValueError:
                raise DataError(f"{e.where}: label {e.label!r} is not a number") from None
        elif task.hf_labels is not None and e.label not in task.labels:  # the export's integers
            try:
                e.label = task.hf_labels[int(e.label)]
            except (ValueError, IndexError):
                raise DataError(
                    f"{e.where}: label {e.label!r} is neither a GLUE {task.name} label {list(task.labels)} "
                    f"nor one of 0..{len(task.hf_labels) - 1}"
                ) from None
    return examples


def labeled(examples: list[Example], path: str | Path) -> list[Example]:
    """``examples`` if all are labeled (train / dev files), else a DataError."""
    for e in examples:
        if e.label is None:
            raise DataError(f"{e.where}: no label (a test file? train and eval files need labels); {path}")
    return examples


def split_scores(task: GlueTask, pred: list, gold: list) -> dict[str, float]:
    """Metrics of one evaluation split: class indices (cls) or scores (reg)."""
    if task.kind == "reg":
        from ptft_fast.finetune.tasks import score_reg

        return score_reg(pred, gold)
    m = classification_metrics(pred, gold)
    if task.positive is not None:
        m["f1"] = binary_f1(pred, gold, task.labels.index(task.positive))
    return m


def task_scores(task: GlueTask, matched: dict[str, float], mismatched: dict[str, float] | None = None):
    """One task's metrics (MNLI: the mismatched accuracy as ``accuracy_mm``) with its GLUE
    ``score``, the mean of the task's metrics, first."""
    m = dict(matched)
    if mismatched is not None:
        m["accuracy_mm"] = mismatched["accuracy"]
    missing = [k for k in task.metrics if k not in m]
    if missing:
        raise ValueError(f"glue {task.name}: no {missing} among the scores (MNLI needs --eval-mismatched)")
    return {"score": sum(m[k] for k in task.metrics) / len(task.metrics), **m}


def glue_average(scores: dict[str, float]) -> float:
    """The GLUE score: the mean of the task scores (task name → score)."""
    if not scores:
        raise ValueError("glue_average: no task scores")
    return sum(scores.values()) / len(scores)


def submission_name(task: GlueTask, input_path: str | Path) -> str:
    """The submission file for predictions on ``input_path``: MNLI's mismatched test set and the
    diagnostic set (AX) by their GLUE file names, else the task's name."""
    stem = Path(input_path).stem.lower()
    if task.name == "mnli":
        if "diagnostic" in stem or stem == "ax":
            return "AX"
        return "MNLI-mm" if "mismatched" in stem else "MNLI-m"
    return task.submission


def write_submission(out_dir: str | Path, name: str, index: list[str], predictions: list) -> Path:
    """``out_dir/<name>.tsv``: ``index<TAB>prediction`` rows (GLUE's submission format)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.tsv"
    tmp = path.with_suffix(".tsv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write("index\tprediction\n")
        for i, p in zip(index, predictions, strict=True):
            f.write(f"{i}\t{p:.3f}\n" if isinstance(p, float) else f"{i}\t{p}\n")
    tmp.replace(path)
    return path
