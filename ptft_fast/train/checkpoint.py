"""Checkpoints: the model as an HF-format folder + the training state beside it, written atomically.

Layout of ``OUT/checkpoints/``::

    step_00000100/model/        config.json + model.safetensors (ptft_fast.hf), ELECTRA/SpanBERT: + head files
    step_00000100/state/        optimizer.safetensors + optimizer.json, rng.safetensors,
                                trainer.json (step, loss scaler, data position, RNG, configs)
    step_00000100/manifest.json size and sha256 of every other file of the checkpoint
    latest                      the name of the newest complete checkpoint (written last)

A checkpoint is assembled in a ``.tmp-*`` folder, every file fsynced, then renamed into place;
only then is ``latest`` replaced (temp file, fsync, rename). A kill at any moment leaves
``latest`` naming a complete checkpoint. Tensors are read with safetensors only (no pickle).

Resuming verifies the chosen checkpoint against its manifest; a damaged one (a file truncated,
emptied, changed or missing) is skipped with a warning that names the file, for the newest older
checkpoint that verifies; only when none does is it an error (one line listing what was wrong).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ptft_fast.errors import UserInputError
from ptft_fast.train.objectives import export_model, import_model
from ptft_fast.utils.atomic import atomic_open, atomic_write_json, fix_mode

LATEST = "latest"
MANIFEST = "manifest.json"
SLEEP_ENV = "PTFT_TEST_CHECKPOINT_SLEEP"  # tests: seconds to pause mid-write (to SIGKILL there)


class ResumeError(UserInputError):
    """A checkpoint that cannot be resumed into this run (message says why)."""


# ---------------------------------------------------------------- optimizer state ↔ safetensors + JSON
def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, pstate in state["state"].items():
        entry = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
                entry[name] = {"tensor": f"{idx}.{name}"}
            else:
                entry[name] = value
        meta["state"][str(idx)] = entry
    return tensors, meta


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for idx, entry in meta["state"].items():
        state[int(idx)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v for k, v in entry.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------- global RNG states
def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the python, numpy, torch and CUDA generators."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    js = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return js, tensors


def set_rng_state(js: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- writing
def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(Path(dirpath) / f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """``folder/manifest.json``: size and sha256 of every other file under ``folder``."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    atomic_write_json(folder / MANIFEST, {"format": 1, "files": files})


def verify(folder: Path) -> str | None:
    """What is wrong with checkpoint ``folder`` (naming the file), or None when every file matches
    its manifest. A checkpoint without a manifest (written by an older version) passes unchecked."""
    if not folder.is_dir():
        return "the folder is missing"
    if not (folder / MANIFEST).is_file():
        return None
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return (
                f"{name} has {size} bytes, {want['size']} expected ({'empty' if size == 0 else 'truncated'})"
            )
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum (damaged)"
    return None


def read_latest(ckpt_dir: Path) -> str | None:
    f = ckpt_dir / LATEST
    return f.read_text().strip() if f.is_file() else None


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model,
    strategy_state: dict,
    trainer_state: dict,
    keep: int,
    export: Callable = export_model,
) -> Path:
    """Write checkpoint ``step_{step:08d}`` atomically, point ``latest`` at it, prune to ``keep``.
    ``export(model, folder)`` writes the weights (default: an HF-format model folder)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    if read_latest(ckpt_dir) == name and verify(ckpt_dir / name) is None:
        return (
            ckpt_dir / name
        )  # already the newest checkpoint (same step, same state); a damaged one is rewritten
    for stale in ckpt_dir.glob(".tmp-*"):  # left by a killed write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=ckpt_dir))
    fix_mode(tmp, directory=True)
    export(model, tmp / "model")
    if os.environ.get(SLEEP_ENV):
        time.sleep(float(os.environ[SLEEP_ENV]))
    state_dir = tmp / "state"
    state_dir.mkdir()
    tensors, meta = _split_optimizer(strategy_state["optimizer"])
    save_file(tensors, state_dir / "optimizer.safetensors")
    fix_mode(state_dir / "optimizer.safetensors")  # safetensors creates 0600 files
    (state_dir / "optimizer.json").write_text(json.dumps(meta))
    rng_js, rng_tensors = rng_state()
    save_file(rng_tensors, state_dir / "rng.safetensors")
    fix_mode(state_dir / "rng.safetensors")
    full = dict(trainer_state, step=step, scaler=strategy_state.get("scaler"), rng=rng_js)
    (state_dir / "trainer.json").write_text(json.dumps(full, indent=1))
    write_manifest(tmp)
    _fsync_tree(tmp)
    final = ckpt_dir / name
    if final.exists():  # complete but never made latest (killed before the pointer was written)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    with atomic_open(ckpt_dir / LATEST) as fh:
        fh.write(name + "\n")
    _fsync_dir(ckpt_dir)
    _prune(ckpt_dir, keep, name)
    return final


def _prune(ckpt_dir: Path, keep: int, latest: str) -> None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading
def _step(path: Path) -> int:
    try:
        return int(path.name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _first_valid(ckpt_dir: Path, chosen: Path) -> Path:
    """``chosen`` if it verifies, else the newest older checkpoint beside it that does (with a
    warning naming what was wrong); ResumeError listing every problem when none does."""
    older = sorted(
        (p for p in ckpt_dir.glob("step_*") if p.is_dir() and 0 <= _step(p) < _step(chosen)),
        key=_step,
        reverse=True,
    )
    problems = []
    for cand in [chosen, *older]:
        problem = verify(cand)
        if problem is None:
            if problems:
                warnings.warn(
                    f"resuming from {cand} instead: skipped {'; '.join(problems)}", UserWarning, stacklevel=3
                )
            return cand
        problems.append(f"{cand.name}: {problem}")
    raise ResumeError(f"no valid checkpoint to resume in {ckpt_dir}: {'; '.join(problems)}")


def resolve(resume: str, out: Path) -> Path:
    """``latest`` (this run's newest), a run folder, or a checkpoint folder → a checkpoint folder
    that verifies (see the module docstring for the fallback)."""
    base = out if resume == LATEST else Path(resume)
    for ckpt_dir in (base / "checkpoints", base):
        name = read_latest(ckpt_dir)
        if name is not None:
            return _first_valid(ckpt_dir, ckpt_dir / name)
    if (base / MANIFEST).is_file() or (base / "state" / "trainer.json").is_file():
        return _first_valid(base.parent, base)
    raise ResumeError(f"--resume {resume}: no checkpoint found (looked for {base}/checkpoints/{LATEST})")


def read_trainer_state(path: Path) -> dict:
    file = path / "state" / "trainer.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot read {file}: {exc}") from exc


def run_finished(out: Path, step: int, max_steps: int) -> bool:
    """A checkpoint at ``step`` of the run in ``out`` ends it: ``max_steps`` reached and the run's
    end (final model, summary of that step) written. A run killed between its last checkpoint and
    its summary is not finished: resuming it writes the end."""
    if step < max_steps:
        return False
    try:
        return json.loads((out / "summary.json").read_text()).get("steps") == step
    except (OSError, ValueError):
        return False


def config_diff(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ, formatted ``key: checkpoint=... now=...``."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint={saved.get(k)!r} now={current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def load_checkpoint(path: Path, model, strategy, load: Callable = import_model) -> dict:
    """Load weights (``load(model, folder)``, the counterpart of save_checkpoint's ``export``),
    optimizer/scaler and global RNG from ``path``; returns the trainer state. A file that cannot be
    read (a checkpoint older than manifests, damaged) is a ResumeError naming it."""
    try:
        state = read_trainer_state(path)
        load(model, path / "model")
        opt = _join_optimizer(load_file(path / "state" / "optimizer.safetensors"),
                              json.loads((path / "state" / "optimizer.json").read_text()))  # fmt: skip
        strategy.load_state_dict({"optimizer": opt, "scaler": state.get("scaler")})
        set_rng_state(state["rng"], load_file(path / "state" / "rng.safetensors"))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        if isinstance(exc, ResumeError):
            raise
        raise ResumeError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    return state
