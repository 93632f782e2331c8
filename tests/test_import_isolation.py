"""The repo-root ``kernels/`` folder never shadows Hugging Face's ``kernels`` distribution.

transformers (≥ 5.25) imports ``kernels`` from ``transformers.integrations.hub_kernels``, and peft
imports that. Each check runs a fresh interpreter of this venv the way users start one — with the
repo root first on ``sys.path`` (``python -c`` / ``python -m`` there), or as a script the way the
``ptft`` entry point runs — and fails if ``import kernels`` resolves into the repository, or if
``ptft_fast.kernels`` stops resolving to the Triton kernel folder. Restoring a
``kernels/__init__.py`` makes the first two fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from installed import import_or_skip

REPO = Path(__file__).resolve().parents[1]
KERNEL_MODULES = (
    "_common",
    "_jit_common",
    "attention",
    "attention_bwd",
    "cross_entropy",
    "layer_norm",
    "lora",
)

# Prints where `kernels` and `ptft_fast.kernels.attention` came from, as JSON on the last line.
PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    for name in sys.argv[1:]:
        importlib.import_module(name)
    import kernels, ptft_fast.kernels.attention as attention
    print(json.dumps({
        "kernels": getattr(kernels, "__file__", None),
        "kernels_path": list(getattr(kernels, "__path__", [])),
        "kernels_has_cuda_properties": hasattr(kernels, "CUDAProperties"),
        "ptft_kernels_path": list(sys.modules["ptft_fast.kernels"].__path__),
        "attention": attention.__file__,
    }))
    """
)


def readme_module_commands() -> list[str]:
    """Modules the README tells users to run with ``python -m`` (its reproduce commands)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"python -m (ptft_fast(?:\.\w+)+)", text)))


def run_probe(argv: list[str], cwd: Path) -> dict:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv} failed in {cwd}:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_kernel_folder(path: str | None) -> bool:
    """Whether ``path`` is the repo's ``kernels/`` folder or a file in it (the venv may live in the
    repo too, so "under the repo" is not the test)."""
    if not path:
        return False
    resolved = Path(path).resolve()
    return resolved == REPO / "kernels" or REPO / "kernels" in resolved.parents


def assert_not_shadowed(found: dict) -> None:
    inside = [p for p in [found["kernels"], *found["kernels_path"]] if in_kernel_folder(p)]
    assert not inside, f"`import kernels` resolved into the repository: {found}"
    assert found["kernels_has_cuda_properties"], f"`kernels` is not Hugging Face's package: {found}"
    assert Path(found["attention"]).resolve() == REPO / "kernels" / "attention.py", found
    assert [str(Path(p).resolve()) for p in found["ptft_kernels_path"]] == [str(REPO / "kernels")], found


def test_readme_lists_module_commands():
    # guards the parser below: an empty list would make the next test check nothing of the README
    assert "ptft_fast.benchmarks.bench_train_e2e" in readme_module_commands()


def test_repo_root_first_on_sys_path_imports_hf_kernels():
    """``python -c`` from the repo root: sys.path[0] is the repo, as under ``python -m ...`` and
    ``python -m pytest``; peft, transformers' hub kernels and every README ``python -m`` module."""
    import_or_skip("peft")
    modules = [
        "peft",
        "transformers.integrations.hub_kernels",
        "ptft_fast.kernels",
        *readme_module_commands(),
    ]
    found = run_probe([sys.executable, "-c", PROBE, *modules], cwd=REPO)
    assert_not_shadowed(found)


def test_script_like_entry_point_imports_hf_kernels(tmp_path):
    """A script (the ``ptft`` entry point is one) started from the repo root: sys.path[0] is the
    script's folder, the import order that of a console script."""
    import_or_skip("peft")
    script = tmp_path / "probe.py"
    script.write_text(PROBE, encoding="utf-8")
    found = run_probe([sys.executable, str(script), "peft", "ptft_fast.cli"], cwd=REPO)
    assert_not_shadowed(found)
    entry = Path(sys.executable).with_name("ptft")
    if entry.exists():
        done = subprocess.run([str(entry), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


def test_this_pytest_process_sees_hf_kernels():
    import_or_skip("transformers")
    import transformers.integrations.hub_kernels  # noqa: F401

    import kernels

    assert not in_kernel_folder(kernels.__file__), kernels.__file__
    assert hasattr(kernels, "CUDAProperties")


def test_kernel_folder_is_a_namespace_portion_and_refuses_its_top_level_name():
    """Where no ``kernels`` distribution is installed, the repo folder is at most an empty namespace
    package: it has no ``__init__.py``, and each kernel module refuses to load as ``kernels.<op>``."""
    assert not (REPO / "kernels" / "__init__.py").exists()
    code = textwrap.dedent(
        f"""
        import importlib, importlib.machinery, importlib.util, sys
        spec = importlib.machinery.PathFinder.find_spec("kernels", [{str(REPO)!r}])
        assert spec.origin in (None, "namespace"), spec  # a namespace portion: no code runs
        sys.modules["kernels"] = importlib.util.module_from_spec(spec)
        for op in {list(KERNEL_MODULES)!r}:
            try:
                importlib.import_module("kernels." + op)
            except ImportError as exc:
                assert "ptft_fast.kernels." + op in str(exc), exc
            else:
                raise SystemExit("kernels." + op + " imported under the top-level name")
        print("refused")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stdout + done.stderr


def test_wheel_installs_kernels_inside_the_package(tmp_path):
    """A wheel carries the folder as ``ptft_fast/kernels/*.py`` and nothing top-level but
    ``ptft_fast``; installed, ``ptft_fast.kernels`` imports from it."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PTFT_BUILD_CUDA": "0"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("ptft_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"ptft_fast"}, top_level
    for op in KERNEL_MODULES:
        assert f"ptft_fast/kernels/{op}.py" in names, names
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = "import ptft_fast.kernels.attention as a, kernels; print(a.__file__); print(kernels.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    attention_file, kernels_file = done.stdout.strip().splitlines()[-2:]
    assert Path(attention_file).resolve() == (site / "ptft_fast" / "kernels" / "attention.py").resolve()
    assert not in_kernel_folder(kernels_file), kernels_file
