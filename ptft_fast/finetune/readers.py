"""Task data readers: GLUE-style TSV/CSV/JSONL with column mapping, CoNLL token labels,
SQuAD-style JSON; any of them also from a Hugging Face ``datasets`` input (save_to_disk folder,
.parquet, .arrow) read as records. Every error names the file and the line (or record) it is about."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ptft_fast.data import hf_datasets
from ptft_fast.errors import UserInputError


class DataError(UserInputError):
    """Bad task data; the message starts with "FILE:LINE:"."""


@dataclass
class Columns:
    text: str = "sentence"  # first text column
    text_pair: str | None = None  # second text column (sentence-pair tasks)
    label: str = "label"  # label column (class name or number)


@dataclass
class Example:
    text: str
    text_pair: str | None = None
    label: str | float | None = None
    where: str = ""  # "file:line" for error messages


@dataclass
class TokenExample:
    words: list[str]
    tags: list[str]
    where: str = ""


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[dict] = field(default_factory=list)  # {"text": str, "answer_start": int}


def _rows(path: Path, fieldnames: list[str] | tuple[str, ...] | None = None):
    """(line number, dict row) for .tsv / .csv / .jsonl files; text that is not UTF-8 is a DataError.
    ``fieldnames``: the column names of a .tsv/.csv file without a header row."""
    try:
        yield from _decoded_rows(path, fieldnames)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start} of a line)") from None


def _decoded_rows(path: Path, fieldnames=None):
    suffix = path.suffix.lower()
    if hf_datasets.is_dataset(path):  # save_to_disk folder, .parquet, .arrow: rows like JSONL records
        yield from hf_datasets.records(path)
    elif suffix in (".tsv", ".csv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(
                f,
                fieldnames=fieldnames,
                delimiter="\t" if suffix == ".tsv" else ",",
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            )
            if reader.fieldnames is None:
                raise DataError(f"{path}:1: empty file (no header row)")
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    raise DataError(f"{path}:{line}: empty line")
                if None in row or any(v is None for v in row.values()):
                    raise DataError(
                        f"{path}:{line}: expected {len(reader.fieldnames)} columns {reader.fieldnames}"
                    )
                yield line, row
    elif suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    raise DataError(f"{path}:{line}: empty line")
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
                yield line, row
    else:
        raise DataError(
            f"{path}: unknown format {suffix!r}; use .tsv, .csv, .jsonl, .parquet, .arrow or a datasets folder"
        )


# Column names recognised when --text-column / --label-column are not given, most specific first.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("text_a", "text_b"))  # fmt: skip
TEXT_COLUMNS = ("sentence", "text", "content", "review", "document", "body", "comment", "tweet", "question")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "gold_label", "y")
ID_COLUMNS = ("id", "idx", "index", "guid", "uid")


def column_names(path: str | Path) -> list[str]:
    """The columns of a .tsv/.csv header or of the first .jsonl record."""
    for _, row in _rows(Path(path)):
        return list(row)
    raise DataError(f"{path}: no examples")


def detect_columns(
    path: str | Path, text: str | None = None, text_pair: str | None = None, label: str | None = None
) -> tuple[Columns, list[str]]:
    """Columns of ``path`` for the roles not given: the label column by a known name; the text
    column (or pair) by a known name, else the only column left besides label and id; then, with
    the text known and no label name found, the only column left besides the text and id is the
    label (``body`` + ``package``). Returns the columns and what was detected (to print);
    ambiguity raises :class:`DataError` naming the columns and the flag(s) to pass."""
    names = column_names(path)
    detected = []
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in names and c not in (text, text_pair)), None)
        if label is not None:
            detected.append(f"label column {label!r}")
    if text is None:
        pair = next((p for p in PAIR_COLUMNS if p[0] in names and p[1] in names), None)
        if pair is not None and text_pair is None:
            text, text_pair = pair
            detected.append(f"text pair columns {text!r}, {text_pair!r}")
        else:
            text = next((c for c in TEXT_COLUMNS if c in names and c != label), None)
            rest = _other_columns(names, label, text_pair)
            if text is None and label is not None and len(rest) == 1:
                text = rest[0]
            if text is None and label is None:
                raise DataError(
                    f"{path}: cannot tell the text column from the label column among {rest}; "
                    "name them with --text-column and --label-column"
                )
            if text is None:
                raise DataError(
                    f"{path}: cannot tell which of the columns {rest} holds the text; name it with --text-column"
                )
            detected.append(f"text column {text!r}")
    if label is None:
        rest = _other_columns(names, text, text_pair)
        if len(rest) != 1:
            raise DataError(
                f"{path}: no label column among {names} (none has a known label name, and "
                f"{len(rest)} columns are left besides the text: {rest}); name it with --label-column"
            )
        label = rest[0]
        detected.append(f"label column {label!r} (the only column left besides the text)")
    return Columns(text, text_pair, label), detected


def _other_columns(names: list[str], *taken: str | None) -> list[str]:
    """The columns of ``names`` that are not ``taken`` and not an id column (a known id name, or
    one ending in ``_id``: ``doc_id``)."""
    return [
        c for c in names if c not in taken and c.lower() not in ID_COLUMNS and not c.lower().endswith("_id")
    ]


def read_examples(
    path: str | Path,
    columns: Columns | None = None,
    *,
    label_set: list[str] | None = None,
    regression: bool = False,
    fieldnames: list[str] | tuple[str, ...] | None = None,
) -> list[Example]:
    """Sentence(-pair) examples. With ``label_set`` every label must be in it; with ``regression``
    labels must be numbers. A missing label column is allowed only if no row has it (test data).
    ``fieldnames``: column names of a .tsv/.csv file without a header row (GLUE's CoLA)."""
    path, cols = Path(path), columns or Columns()
    if not path.is_file() and not hf_datasets.is_dataset(path):
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    for line, row in _rows(path, fieldnames):
        where = f"{path}:{line}"
        for need in (cols.text, cols.text_pair):
            if need is not None and need not in row:
                raise DataError(f"{where}: missing column {need!r} (columns: {sorted(row)})")
        label = row.get(cols.label)
        if label is not None:
            if regression:
                try:
                    label = float(label)
                except (TypeError, ValueError):
                    raise DataError(f"{where}: label {label!r} is not a number") from None
            else:
                label = str(label)
                if label_set is not None and label not in label_set:
                    raise DataError(f"{where}: label {label!r} not in the label set {label_set}")
        text = str(row[cols.text])
        if not text.strip():
            raise DataError(f"{where}: empty text in column {cols.text!r}")
        pair = str(row[cols.text_pair]) if cols.text_pair else None
        out.append(Example(text, pair, label, where))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


# columns of a datasets input for token classification (CoNLL-2003's names first) and QA (SQuAD's)
TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner", "pos_tags", "chunk_tags")
SQUAD_COLUMNS = ("question", "context")


def _column(path: Path, row: dict, names: tuple[str, ...], role: str) -> str:
    found = next((c for c in names if c in row), None)
    if found is None:
        raise DataError(f"{path}:1: no {role} column among {sorted(row)} (expected one of {list(names)})")
    return found


def _check_tags(where: str, tags: list[str], label_set) -> None:
    bad = next((t for t in tags if t not in label_set), None) if label_set is not None else None
    if bad is not None:
        raise DataError(f"{where}: tag {bad!r} not in the label set {label_set}")


def _conll_records(path: Path, label_set, with_tags: bool) -> list[TokenExample]:
    """A datasets input with a list-of-tokens column and a list-of-tags column (names or
    ``ClassLabel`` indices), one sentence per row; rows without tokens are skipped."""
    out: list[TokenExample] = []
    words_col = tags_col = names = None
    for n, row in _rows(path):
        where = f"{path}:{n}"
        if words_col is None:
            words_col = _column(path, row, TOKEN_COLUMNS, "token")
            if with_tags:
                tags_col = _column(path, row, TAG_COLUMNS, "tag")
                names = hf_datasets.class_names(path, tags_col)
        words = [str(w) for w in row[words_col] or []]
        if not words:
            continue
        if not with_tags:
            out.append(TokenExample(words, ["O"] * len(words), where))
            continue
        tags = [names[t] if names else str(t) for t in row[tags_col] or []]
        if len(tags) != len(words):
            raise DataError(
                f"{where}: {len(words)} tokens in {words_col!r} but {len(tags)} tags in {tags_col!r}"
            )
        _check_tags(where, tags, label_set)
        out.append(TokenExample(words, tags, where))
    return out


def read_conll(
    path: str | Path, *, word_col: int = 0, tag_col: int = -1, label_set=None, with_tags: bool = True
) -> list[TokenExample]:
    """CoNLL: one token per line (whitespace-separated columns), blank line between sentences,
    ``-DOCSTART-`` lines skipped; or a datasets input with ``tokens`` and ``ner_tags`` (or
    TOKEN_COLUMNS / TAG_COLUMNS) columns. ``with_tags=False`` reads words only (a file to predict
    tags for; its examples get "O" tags)."""
    path = Path(path)
    if hf_datasets.is_dataset(path):
        out = _conll_records(path, label_set, with_tags)
        if not out:
            raise DataError(f"{path}: no sentences")
        return out
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out: list[TokenExample] = []
    words: list[str] = []
    tags: list[str] = []
    start = 1
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    out.append(TokenExample(words, tags, f"{path}:{start}"))
                words, tags, start = [], [], line_no + 1
                continue
            if not with_tags:
                words.append(parts[word_col])
                tags.append("O")
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{line_no}: expected a token and a tag, got {line.strip()!r}")
            tag = parts[tag_col]
            _check_tags(f"{path}:{line_no}", [tag], label_set)
            words.append(parts[word_col])
            tags.append(tag)
    if words:
        out.append(TokenExample(words, tags, f"{path}:{start}"))
    if not out:
        raise DataError(f"{path}: no sentences")
    return out


def _check_answers(where: str, ctx: str, answers: list[dict]) -> None:
    for ans in answers:
        s, t = ans.get("answer_start"), ans.get("text", "")
        if not isinstance(s, int) or ctx[s : s + len(t)] != t:
            raise DataError(f"{where}: answer {t!r} is not at answer_start={s} of the context")


def _squad_records(path: Path) -> list[QAExample]:
    """A datasets input in the SQuAD layout of the hub: ``question``, ``context`` and ``answers``
    as ``{"text": [...], "answer_start": [...]}`` (a list of ``{text, answer_start}`` also does),
    ``id`` optional."""
    out = []
    for n, row in _rows(path):
        where = f"{path}:{n}"
        for need in SQUAD_COLUMNS:
            if not isinstance(row.get(need), str):
                raise DataError(f"{where}: missing text column {need!r} (columns: {sorted(row)})")
        answers = row.get("answers") or []
        if isinstance(answers, dict):
            answers = [
                {"text": t, "answer_start": s} for t, s in zip(answers["text"], answers["answer_start"])
            ]
        answers = [{"text": a["text"], "answer_start": a["answer_start"]} for a in answers]
        _check_answers(where, row["context"], answers)
        out.append(QAExample(str(row.get("id", n)), row["question"], row["context"], answers))
    return out


def read_squad(path: str | Path) -> list[QAExample]:
    """SQuAD v1/v2 JSON: data[].paragraphs[].{context, qas[].{id, question, answers[]}}, or a
    datasets input with SQuAD's columns (:func:`_squad_records`); each answer's ``answer_start``
    must point at its text in the context."""
    path = Path(path)
    if hf_datasets.is_dataset(path):
        out = _squad_records(path)
        if not out:
            raise DataError(f"{path}: no questions")
        return out
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or "data" not in data:
        raise DataError(f"{path}:1: expected an object with a 'data' list (SQuAD format)")
    out = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            ctx = para.get("context")
            if not isinstance(ctx, str):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}]: missing 'context'")
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                if "question" not in qa:
                    raise DataError(f"{where}: missing 'question'")
                answers = qa.get("answers", [])
                _check_answers(where, ctx, answers)
                out.append(QAExample(str(qa.get("id", f"{a}-{p}-{q}")), qa["question"], ctx, answers))
    if not out:
        raise DataError(f"{path}: no questions")
    return out


def column_values(
    path: str | Path, names: tuple[str, ...], fieldnames: list[str] | tuple[str, ...] | None = None
) -> list[str] | None:
    """The values of the first of ``names`` that is a column of ``path`` (e.g. a test file's
    example ids), one per row; None when there is none."""
    rows = [row for _, row in _rows(Path(path), fieldnames)]
    for name in names:
        if rows and name in rows[0]:
            return [str(r.get(name, "")) for r in rows]
    return None
