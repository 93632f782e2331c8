"""requirements-lock.txt pins what the Makefile installs, and agrees with pyproject.toml.

The lock is a pip constraints file of exact versions from a green venv (``make lock``); every
Makefile target that builds the venv installs through it, so an upstream release cannot change
what CI tests. torch is left to ``TORCH_SPEC``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements-lock.txt"
EXTRAS = ("test", "deepspeed")  # what `make setup` installs
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{LOCK.name}:{number}: not an exact pin `name==version`: {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{LOCK.name}:{number}: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


def project_requirements() -> list[Requirement]:
    """Direct requirements of the install `make setup` does, on this platform."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    raw = list(project["dependencies"])
    for extra in EXTRAS:
        raw += project["optional-dependencies"][extra]
    env = default_environment()
    reqs = [Requirement(r) for r in raw]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**env, "extra": ""})]


def test_lock_is_exact_pins_without_torch():
    pins = locked()
    assert len(pins) > 20, pins
    assert "torch" not in pins, "torch follows TORCH_SPEC (CPU wheel here, a CUDA build elsewhere)"


def test_lock_covers_every_direct_requirement_within_its_bounds():
    pins = locked()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req} (pyproject) has no pin in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside pyproject's {req}"
        )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["setup", "test", "test-fast", "demo", "lint", "csrc-check", "bench"])
def test_every_target_that_builds_the_venv_installs_through_the_lock(target):
    """``make -n -B TARGET`` prints the recipe as if the venv were stale: each pip install in it
    must carry ``-c requirements-lock.txt``."""
    done = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stdout.splitlines() if re.search(r"\bpip install\b", line)]
    assert installs, f"make {target} builds no venv:\n{done.stdout}"
    unlocked = [line for line in installs if f"-c {LOCK.name}" not in line]
    assert not unlocked, f"make {target} installs without the lock: {unlocked}"


def test_makefile_venv_matches_the_lock():
    """In the Makefile's venv, every locked distribution is installed at exactly its pin."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not the Makefile's venv ({sys.prefix}); run_gpu.sh installs without the lock")
    drift = {}
    for name, version in locked().items():
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            drift[name] = (str(version), str(have))
    assert not drift, f"installed versions differ from {LOCK.name} (pinned, installed): {drift}"
