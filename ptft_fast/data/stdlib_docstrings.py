"""A second embedded corpus: the docstrings of the standard library's own source files.

Read with ``ast`` from the ``.py`` files under the interpreter's stdlib directory — nothing is
imported, so no module runs (``antigravity``, ``this``, GUI toolkits are harmless) and the result
is the same on every machine with the same Python. One document per module: its module docstring
followed by the docstrings of its classes, functions and methods, in source order. Test suites,
``site-packages``, ``idlelib`` and private ``_``-prefixed files are skipped.

``exclude`` drops individual docstrings whose first paragraph (normalised like the embedded
docstring task: ``inspect.cleandoc``, first blank-line paragraph, whitespace collapsed, cut to
``max_chars``) is in the set — how the transfer script keeps the task's held-out eval texts out
of pre-training.
"""

from __future__ import annotations

import ast
import inspect
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from ptft_fast.data.corpus import Document

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "idlelib", "__pycache__",
             "lib2to3", "ensurepip", "turtledemo", "config-3"}  # fmt: skip


def first_paragraph(doc: str, max_chars: int = 300) -> str:
    """The task's normalisation of a docstring: first paragraph, whitespace collapsed, cut."""
    para = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(para.split())[:max_chars]


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """Public ``.py`` files of the stdlib (sorted), without tests and private modules."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).parts
        if any(p in SKIP_DIRS or p.startswith("config-") for p in rel[:-1]):
            continue
        if any(p.startswith("_") and p != "__init__.py" for p in rel):
            continue
        out.append(path)
    return out


def _docstrings(tree: ast.Module) -> Iterator[str]:
    doc = ast.get_docstring(tree)
    if doc:
        yield doc
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def stdlib_docstring_documents(
    exclude: Iterable[str] = (), *, root: str | Path | None = None, max_chars: int = 300
) -> Iterator[Document]:
    """One :class:`Document` per stdlib module with docstrings (source = the file path)."""
    skip = set(exclude)
    for path in stdlib_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a file for another Python version / encoding
            continue
        docs = [d for d in _docstrings(tree) if first_paragraph(d, max_chars) not in skip]
        if docs:
            yield Document("\n\n".join(docs), str(path), 1)
