"""No import goes up the layers (docs/ARCHITECTURE.md, "Layers").

kernels/ → ops → nn → models, data → peft → hf, generate → train, finetune → benchmarks → cli.
A module may import from its own package and from any lower layer, never from a higher or an equal
one; ``ptft_fast.utils`` and ``ptft_fast.errors`` are below everything and import nothing of
ptft_fast. Every import counts,
also those inside functions: a function-level import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# rank of each top-level part of ptft_fast (kernels/ and benchmarks/ install as ptft_fast.kernels and
# ptft_fast.benchmarks); an import must go to a strictly lower rank, or stay in its own part
RANKS = {
    "utils": 0,
    "errors": 0,  # ptft_fast.errors: the base of the errors a user can fix, raised by every layer
    "kernels": 1,
    "ops": 2,
    "nn": 3,
    "models": 4,
    "data": 4,
    "peft": 5,
    "hf": 6,  # interop with transformers and peft: converts models and adapters
    "generate": 6,
    "train": 7,
    "finetune": 7,
    "benchmarks": 8,
    "cli": 9,
}
# the package facade (ptft_fast/__init__.py, __main__.py) and the import-path helper sit outside the layers
FACADE = {"__init__", "__main__", "_source_tree", "_C"}


def part_of_file(path: Path) -> str:
    rel = path.relative_to(REPO).parts
    if rel[0] in ("kernels", "benchmarks"):
        return rel[0]
    return rel[1].removesuffix(".py")


def imported_parts(node: ast.AST) -> list[tuple[str, int]]:
    """(part, line) for every ``ptft_fast.<part>`` the node imports."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "ptft_fast" and len(parts) > 1:
                found.append((parts[1], node.lineno))
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        parts = node.module.split(".")
        if parts[0] != "ptft_fast":
            return found
        if len(parts) > 1:
            found.append((parts[1], node.lineno))
        else:  # from ptft_fast import ops, nn
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def source_files() -> list[Path]:
    files = [*REPO.glob("ptft_fast/**/*.py"), *REPO.glob("kernels/**/*.py"), *REPO.glob("benchmarks/**/*.py")]
    return sorted(f for f in files if "test_" not in f.name)


def upward_imports() -> list[str]:
    bad = []
    for path in source_files():
        source = part_of_file(path)
        if source in FACADE:
            continue
        assert source in RANKS, f"{path.relative_to(REPO)}: part {source!r} has no layer in RANKS"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for target, line in imported_parts(node):
                if target == source or target in FACADE - {"__init__"}:
                    continue
                if target not in RANKS:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports unknown part ptft_fast.{target}")
                elif RANKS[target] >= RANKS[source]:
                    bad.append(
                        f"{path.relative_to(REPO)}:{line}: {source} (layer {RANKS[source]}) imports "
                        f"ptft_fast.{target} (layer {RANKS[target]})"
                    )
    return bad


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of_file(p) for p in source_files()} - FACADE
    assert parts <= set(RANKS), parts - set(RANKS)


def test_no_import_goes_up_the_layers():
    bad = upward_imports()
    assert not bad, "imports that go up (or across) the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("ops", "kernels", True),
        ("kernels", "ops", False),
        ("train", "benchmarks", False),
        ("models", "data", False),
    ],
)
def test_rank_rule(source, target, allowed):
    # guards the rule itself: lower is allowed, higher and sideways are not
    assert (RANKS[target] < RANKS[source]) is allowed
