"""Hugging Face ``datasets`` on disk as input (no hub): a ``Dataset.save_to_disk`` folder, a
``.parquet`` file or an ``.arrow`` file (``Dataset.from_file``'s format, what datasets caches and
saves). ``ptft pretrain --data`` reads the documents of one text column, ``ptft finetune
--train/--dev/--eval`` the rows as records (like a .jsonl file's; token classification and QA
read their CoNLL / SQuAD columns from them, ``ClassLabel`` tags by name).

A ``DatasetDict`` folder (``dataset_dict.json`` with one sub-folder per split) is refused with the
splits named: pass ``DIR/<split>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from ptft_fast.errors import UserInputError

SUFFIXES = (".parquet", ".arrow")
TEXT_COLUMNS = ("text", "content", "document", "sentence", "body", "review", "article", "story")


class DatasetInputError(UserInputError):
    """A datasets input that cannot be read (the message names the path and why)."""


def is_dataset(path: str | Path | None) -> bool:
    """``path`` is a parquet / arrow file or a ``save_to_disk`` folder (Dataset or DatasetDict)."""
    if path is None:
        return False
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() in SUFFIXES
    return p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json"))


def load(path: str | Path):
    """The ``datasets.Dataset`` at ``path`` (memory-mapped; parquet is read through pyarrow)."""
    import datasets
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        if p.is_dir():
            if (p / "dataset_dict.json").is_file():
                splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
                raise DatasetInputError(
                    f"{p} is a DatasetDict with splits {splits}: give one split's folder, e.g. {p / splits[0]}"
                    if splits
                    else f"{p} is a DatasetDict folder without splits"
                )
            return datasets.load_from_disk(str(p))
        if p.suffix.lower() == ".parquet":
            return datasets.Dataset(pq.read_table(p))
        return datasets.Dataset.from_file(str(p))
    except DatasetInputError:
        raise
    except (OSError, ValueError, FileNotFoundError) as exc:  # pyarrow errors are OSError/ValueError
        raise DatasetInputError(
            f"{p}: cannot read it as a datasets input ({type(exc).__name__}: {exc})"
        ) from None


def string_columns(ds) -> list[str]:
    return [
        name
        for name, feature in ds.features.items()
        if getattr(feature, "dtype", None) in ("string", "large_string")
    ]


def text_column(ds, path: str | Path, requested: str | None = None) -> str:
    """``requested`` (must exist and hold strings), else a known text column name, else the only
    string column; otherwise a DatasetInputError naming the columns and ``--text-column``."""
    names, strings = list(ds.column_names), string_columns(ds)
    if requested is not None:
        if requested not in names:
            raise DatasetInputError(f"{path}: no column {requested!r} (columns: {names})")
        if requested not in strings:
            raise DatasetInputError(f"{path}: column {requested!r} holds {ds.features[requested]}, not text")
        return requested
    known = next((c for c in TEXT_COLUMNS if c in strings), None)
    if known is not None:
        return known
    if len(strings) == 1:
        return strings[0]
    raise DatasetInputError(
        f"{path}: cannot tell which of the string columns {strings} holds the text; name it with --text-column"
        if strings
        else f"{path}: no text column (columns: {names})"
    )


def texts(path: str | Path, column: str | None = None) -> list[str]:
    """The non-empty documents of the text column (detected unless ``column`` is given)."""
    ds = load(path)
    name = text_column(ds, path, column)
    return [t for t in ds[name] if t is not None and t.strip()]


def class_names(path: str | Path, column: str) -> list[str] | None:
    """The names of a ``ClassLabel`` column (or of a list of them, CoNLL's ``ner_tags``), by index;
    None when the column holds values that are their own names."""
    feature = load(path).features[column]
    feature = getattr(feature, "feature", feature)  # a List / Sequence of ClassLabel
    return list(feature.names) if hasattr(feature, "names") else None


def records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row as a dict) for every row."""
    yield from enumerate(load(path), 1)


def fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of the dataset's files (names and bytes), for a run's data key."""
    from ptft_fast.data.corpus import hash_files

    p = Path(path)
    h = hashlib.sha256()
    hash_files(h, p, sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])
    return f"sha256:{h.hexdigest()}"
