"""Streaming corpus readers (.txt, .jsonl, folders) and the embedded default corpus.

Files are read line by line as bytes and each line is decoded strictly: a line that is not valid
UTF-8 (or a .jsonl line that is not a JSON object with the text field) is reported as a
:class:`BrokenLine` with its file and 1-based line number and skipped, never decoded with
replacement characters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Document:
    """One document of the corpus and where it came from (file, first line)."""

    text: str
    source: str
    line: int


@dataclass(frozen=True)
class BrokenLine:
    """A skipped input line: file, 1-based line number and why it was skipped."""

    source: str
    line: int
    reason: str


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly plus every .txt/.jsonl file under named folders (sorted, recursive)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {str(path)!r} does not exist")
    return files


def _decoded_lines(path: Path, on_broken: Callable[[BrokenLine], None]) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without the newline) for the valid UTF-8 lines of ``path``."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                on_broken(BrokenLine(str(path), lineno, f"invalid UTF-8 at byte {exc.start}: {exc.reason}"))
                continue
            if "\x00" in line:
                on_broken(BrokenLine(str(path), lineno, "NUL byte in line"))
                continue
            yield lineno, line.rstrip("\r\n")


TXT_SPLITS = ("auto", "blank", "line", "file")
AUTO_LINE_MIN_LINES = 10  # a file of at least this many lines and no blank line is one document per line
_SNIFF_LINES = 10_000


def detect_txt_split(path: Path) -> str:
    """ "line" when the first 10,000 lines of ``path`` hold no blank line and at least 10 lines
    (a line-per-document file), else "blank" (blank-line separated documents; a short file with no
    blank line is one document)."""
    lines = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                return "blank"
            lines += 1
            if lines >= _SNIFF_LINES:
                break
    return "line" if lines >= AUTO_LINE_MIN_LINES else "blank"


def read_txt(
    path: Path, on_broken: Callable[[BrokenLine], None], doc_split: str = "blank"
) -> Iterator[Document]:
    """Documents of a text file.

    doc_split: "blank" — documents separated by blank lines (BERT's pre-training data format);
    "line" — one document per line; "file" — the whole file is one document; "auto" — "line" or
    "blank", as :func:`detect_txt_split` finds.
    """
    if doc_split not in TXT_SPLITS:
        raise ValueError(f"doc_split must be one of {'|'.join(TXT_SPLITS)}, got {doc_split!r}")
    if doc_split == "auto":
        doc_split = detect_txt_split(path)
    buf: list[str] = []
    start = 0
    for lineno, line in _decoded_lines(path, on_broken):
        if doc_split == "line":
            if line.strip():
                yield Document(line, str(path), lineno)
            continue
        if doc_split == "blank" and not line.strip():
            if buf:
                yield Document("\n".join(buf), str(path), start)
            buf = []
            continue
        if not buf:
            start = lineno
        buf.append(line)
    if buf:
        yield Document("\n".join(buf), str(path), start)


def read_jsonl(
    path: Path, on_broken: Callable[[BrokenLine], None], field: str = "text"
) -> Iterator[Document]:
    """One document per JSON line, taken from ``field``; bad JSON or a missing field is reported."""
    for lineno, line in _decoded_lines(path, on_broken):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            on_broken(BrokenLine(str(path), lineno, f"invalid JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            on_broken(BrokenLine(str(path), lineno, f"no string field {field!r}"))
            continue
        yield Document(obj[field], str(path), lineno)


def read_documents(
    inputs: Iterable[str | os.PathLike],
    on_broken: Callable[[BrokenLine], None] | None = None,
    *,
    jsonl_field: str = "text",
    txt_doc_split: str = "blank",
) -> Iterator[Document]:
    """Stream the documents of every input file or folder, in order.

    on_broken: called with each skipped line (default: ignore — pass a list's ``append`` to keep them).
    """
    sink = on_broken or (lambda _b: None)
    for path in expand_inputs(inputs):
        if path.suffix in JSONL_SUFFIXES:
            yield from read_jsonl(path, sink, jsonl_field)
        else:
            yield from read_txt(path, sink, txt_doc_split)


def embedded_corpus() -> list[str]:
    """The standard library's ``pydoc_data.topics`` help texts: 79 English documents (~465k chars).

    Ships with every Python, so tokenizer training and pre-training work with no download.
    """
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


def embedded_documents() -> Iterator[Document]:
    """:func:`embedded_corpus` as :class:`Document` records (source ``pydoc_data.topics:<name>``)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(topics[name].strip(), f"pydoc_data.topics:{name}", 1)


def fingerprint(inputs: Iterable[str | os.PathLike] | None) -> str:
    """``sha256:<hex>`` of a corpus: every input file's name (relative to the folder named) and
    bytes, in reading order; ``None`` = the embedded corpus (its text, which follows the Python
    version). Reads every byte: a changed file is a changed corpus whatever its mtime says."""
    h = hashlib.sha256()
    if inputs is None:
        for text in embedded_corpus():
            h.update(text.encode("utf-8") + b"\0")
        return f"sha256:{h.hexdigest()}"
    for item in inputs:
        hash_files(h, Path(item), expand_inputs([Path(item)]))
    return f"sha256:{h.hexdigest()}"


def hash_files(h, base: Path, files: Iterable[Path]) -> None:
    """Feed every file's name (relative to ``base`` when it is a folder) and bytes into ``h``."""
    for path in files:
        h.update(str(path.relative_to(base) if base.is_dir() else path.name).encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
