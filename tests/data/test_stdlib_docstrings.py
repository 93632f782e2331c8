"""The stdlib-docstring corpus: read with ast (nothing imported), skip rules, eval-text exclusion."""

from __future__ import annotations

from ptft_fast.data.stdlib_docstrings import first_paragraph, stdlib_docstring_documents, stdlib_files

MODULE = '''"""A module about widgets.

More detail on widgets."""

raise SystemExit("importing this file would stop the test run")


class Widget:
    """Build a widget from parts.

    The parts are copied."""

    def spin(self):
        """Spin   the widget
        quickly."""


async def fetch():
    """Fetch a widget over the network."""
'''


def _tree(root):
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text('"""Package docs for pkg."""\n')
    (root / "pkg" / "widgets.py").write_text(MODULE)
    (root / "pkg" / "_private.py").write_text('"""hidden private module docs"""\n')
    (root / "test").mkdir()
    (root / "test" / "test_widgets.py").write_text('"""test suite docs"""\n')
    (root / "broken.py").write_text("def f(:\n")
    (root / "nodoc.py").write_text("x = 1\n")
    return root


def test_files_skip_tests_and_private_modules(tmp_path):
    names = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(_tree(tmp_path))]
    assert names == ["broken.py", "nodoc.py", "pkg/__init__.py", "pkg/widgets.py"]


def test_documents_in_source_order_without_importing(tmp_path):
    docs = {d.source.rsplit("/", 1)[-1]: d.text for d in stdlib_docstring_documents(root=_tree(tmp_path))}
    assert set(docs) == {"__init__.py", "widgets.py"}  # broken and undocumented files dropped
    parts = docs["widgets.py"].split("\n\n")
    assert parts[0] == "A module about widgets." and parts[2].startswith("Build a widget")
    assert "Fetch a widget over the network." in parts


def test_exclude_drops_docstrings_by_their_normalised_first_paragraph(tmp_path):
    root = _tree(tmp_path)
    assert first_paragraph("Spin   the widget\n        quickly.") == "Spin the widget quickly."
    docs = list(stdlib_docstring_documents(["Spin the widget quickly.", "Package docs for pkg."], root=root))
    assert [d.source.rsplit("/", 1)[-1] for d in docs] == ["widgets.py"]
    assert "Spin" not in docs[0].text and "Build a widget" in docs[0].text
