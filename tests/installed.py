"""Skip a test only for what is not installed (tests/ is put on sys.path by tests/conftest.py).

``pytest.importorskip`` skips on any ImportError, so an installed package that is broken, or a
ptft_fast module that fails to import through it, turned into a quiet skip. :func:`import_or_skip`
skips only when the distribution is absent (``importlib.metadata``); an installed one that does
not import is an error, and the test fails.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

import pytest


def import_or_skip(module: str, distribution: str | None = None) -> ModuleType:
    """``import module``; skip (also at module level) only when ``distribution`` (default: the
    module's top-level name) is not installed."""
    dist = distribution or module.split(".")[0]
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed", allow_module_level=True)
    return importlib.import_module(module)
