"""An embedded labeled task from text that ships with Python: which standard-library package does
a docstring come from? No download; deterministic.

Texts are the first paragraph of the docstrings of public functions, classes and methods of the
packages in ``PACKAGES`` (and their submodules); the label is the package. Duplicated texts
(inherited or copied docstrings) are dropped, and so are texts that name their package, which
would make the task trivial. Train/eval split by a hash of the text.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pkgutil
import re

from ptft_fast.finetune.readers import Example

PACKAGES = ("asyncio", "email", "unittest", "xml", "http", "logging")


def _modules(package: str):
    pkg = importlib.import_module(package)
    yield pkg
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), package + "."):
        if any(part.startswith("_") or part in ("test", "tests") for part in info.name.split(".")[1:]):
            continue
        try:
            yield importlib.import_module(info.name)
        except Exception:  # platform-specific submodules (e.g. asyncio.windows_events)
            continue


def _first_paragraph(doc: str | None, max_chars: int) -> str | None:
    if not doc:
        return None
    para = inspect.cleandoc(doc).split("\n\n")[0]
    text = " ".join(para.split())
    return text[:max_chars] if len(text) >= 20 else None


def _docstrings(package: str, max_chars: int):
    for mod in _modules(package):
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            yield _first_paragraph(obj.__doc__, max_chars)
            if inspect.isclass(obj):
                for mname, meth in vars(obj).items():
                    if not mname.startswith("_") and inspect.isfunction(meth):
                        yield _first_paragraph(meth.__doc__, max_chars)


def docstring_task(
    packages: tuple[str, ...] = PACKAGES, *, max_chars: int = 300, eval_fraction: float = 0.2
) -> tuple[list[Example], list[Example], list[str]]:
    """(train, eval, labels): Examples with text = a docstring paragraph, label = package name."""
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for pkg in packages:
        leak = re.compile(rf"\b{re.escape(pkg)}\b", re.IGNORECASE)
        for text in _docstrings(pkg, max_chars):
            if text is None or text in seen or leak.search(text):
                continue
            seen.add(text)
            rows.append((text, pkg))
    rows.sort()
    train, evaluation = [], []
    for text, pkg in rows:
        h = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (evaluation if h < eval_fraction else train).append(Example(text, None, pkg, f"<stdlib {pkg}>"))
    return train, evaluation, list(packages)
