"""No import goes up the layers (docs/ARCHITECTURE.md, "Layers").

kernels/ → ops → nn → models, data → peft → hf, generate → train → finetune → benchmarks → cli.
A module may import from its own package and from any lower layer, never from a higher or an equal
one; ``ptft_fast.utils`` and ``ptft_fast.errors`` are below everything and import nothing of
ptft_fast. Every import counts,
also those inside functions: a function-level import is still a dependency. The one exception: the
module paths that launchers run (``deepspeed --module ptft_fast.train.deepspeed_run``) hand their
argv to ``ptft_fast.cli`` from their ``if __name__ == "__main__":`` block, which no importer runs.
Argument parsing (argparse) lives in ``ptft_fast.cli`` (and in the benchmark scripts).
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
    "train": 7,  # the training machinery (strategies, checkpoints, metrics) and the pre-training loop
    "finetune": 8,  # fine-tuning runs on train's machinery; train never imports finetune
    "benchmarks": 9,
    "cli": 10,
}
# the package facade (ptft_fast/__init__.py, __main__.py) and the import-path helper sit outside the layers
FACADE = {"__init__", "__main__", "_source_tree", "_C"}
# module paths launchers run (README, docs/deepspeed.md): their __main__ block may call into the CLI
ENTRY_POINTS = {"ptft_fast/train/deepspeed_run.py", "ptft_fast/train/ds_launch.py"}
# parts that may parse a command line
ARGPARSE_PARTS = {"cli", "benchmarks"}


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


def main_block_nodes(tree: ast.Module) -> set[int]:
    """ids of every node inside a top-level ``if __name__ == "__main__":`` block."""
    inside: set[int] = set()
    for stmt in tree.body:
        test = stmt.test if isinstance(stmt, ast.If) else None
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__"
        ):
            inside |= {id(node) for node in ast.walk(stmt)}
    return inside


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
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        entry = main_block_nodes(tree) if path.relative_to(REPO).as_posix() in ENTRY_POINTS else set()
        for node in ast.walk(tree):
            for target, line in imported_parts(node):
                if target == source or target in FACADE - {"__init__"}:
                    continue
                if target == "cli" and id(node) in entry:
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


def test_argument_parsing_lives_in_the_cli():
    parsing = []
    for path in source_files():
        if part_of_file(path) in ARGPARSE_PARTS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if "argparse" in names or (isinstance(node, ast.ImportFrom) and node.module == "argparse"):
                parsing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not parsing, "argparse outside ptft_fast.cli:\n" + "\n".join(parsing)


def test_entry_points_reach_the_cli_only_from_their_main_block():
    """The exception for launcher entry points covers their __main__ block and nothing else."""
    assert {p.relative_to(REPO).as_posix() for p in source_files()} >= ENTRY_POINTS
    code = "import sys\nfrom ptft_fast.cli import x\nif __name__ == '__main__':\n    from ptft_fast.cli import y\n"
    tree = ast.parse(code)
    inside = main_block_nodes(tree)
    lines = sorted(line for node in ast.walk(tree) if id(node) in inside for _, line in imported_parts(node))
    assert lines == [4]


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
