"""A test skips only for what is not installed (tests/installed.py), never for an import that breaks."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from installed import import_or_skip

TESTS = Path(__file__).resolve().parent


def test_a_distribution_that_is_not_installed_skips():
    with pytest.raises(pytest.skip.Exception, match="ptft_no_such_distribution is not installed"):
        import_or_skip("ptft_no_such_distribution.sub")


def test_an_installed_distribution_that_does_not_import_fails(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "peft", None
    )  # import peft now raises ImportError, as a broken install does
    with pytest.raises(pytest.skip.Exception):
        pytest.importorskip("peft")  # what the tests used: the broken import became a skip
    with pytest.raises(ImportError):
        import_or_skip("peft")


def test_an_installed_distribution_imports():
    assert import_or_skip("safetensors.torch").__name__ == "safetensors.torch"


def test_no_test_importorskips_an_installable_package():
    """pytest.importorskip only for standard-library modules that an older Python lacks."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == Path(__file__).name:  # the contrast above calls it on purpose
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value.split(".")[0] not in sys.stdlib_module_names
            ):
                found.append(f"{path.relative_to(TESTS)}:{node.lineno} {node.args[0].value}")
    assert not found, "use installed.import_or_skip:\n" + "\n".join(found)
