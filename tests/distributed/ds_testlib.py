"""Helpers (imported by the tests) for the multi-rank DeepSpeed tests: CPU accelerator, gloo, 2 ranks on this machine.

Every job runs under ``ptft_fast.train.ds_launch`` (watchdog + timeout) inside a
``subprocess.run`` timeout, so a broken job fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

# A tiny BERT MLM run: seconds per job on 2 CPU cores.
BASE = {
    "model": "bert-tiny-cpu",
    "objective": "mlm",
    "seq_len": 32,
    "micro_batch_size": 2,
    "max_steps": 4,
    "warmup_steps": 1,
    "log_every": 1,
    "eval_every": 0,
    "eval_batches": 1,
    "save_every": 0,
    "progress": False,
    "plot": False,
}


def sets(**over) -> list[str]:
    out = []
    for k, v in {**BASE, **over}.items():
        out += ["--set", f"{k}={v}"]
    return out


def ds_command(out: Path, args: list[str], nproc: int = 2, timeout: float = 110.0) -> list[str]:
    return [
        sys.executable, "-m", "ptft_fast.train.ds_launch", "--nproc", str(nproc), "--timeout", str(timeout), "--",
        sys.executable, "-m", "ptft_fast.train.deepspeed_run", *args,
    ]  # fmt: skip


def run_ds(out: Path, args: list[str], nproc: int = 2, timeout: float = 110.0) -> subprocess.CompletedProcess:
    """Run a DeepSpeed job to completion (bounded by ``timeout``); output captured."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        ds_command(out, args, nproc, timeout), env=env, capture_output=True, text=True, timeout=timeout + 15
    )


def train_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def zero3_config(path: Path, **zero) -> Path:
    """A ZeRO-3 JSON that partitions every parameter (tiny tensors are kept whole by default)."""
    cfg = {
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_model_persistence_threshold": 0,
            **zero,
        },
    }
    path.write_text(json.dumps(cfg))
    return path


WORKER = Path(__file__).resolve().parent / "ds_zero3_worker.py"


def run_worker(mode: str, out: Path, ds_json: Path, timeout: float = 110.0) -> subprocess.CompletedProcess:
    """Run ds_zero3_worker.py MODE on 2 ranks under the watchdog launcher."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable, "-m", "ptft_fast.train.ds_launch", "--nproc", "2", "--timeout", str(timeout), "--",
        sys.executable, str(WORKER), mode, str(out), str(ds_json),
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 15)


FINETUNE_WORKER = Path(__file__).resolve().parent / "ds_finetune_worker.py"


def finetune_command(*args, nproc: int = 2, timeout: float = 200.0) -> list[str]:
    """``ds_finetune_worker.py ARGS`` on ``nproc`` ranks under the watchdog launcher."""
    return [
        sys.executable, "-m", "ptft_fast.train.ds_launch", "--nproc", str(nproc), "--timeout", str(timeout), "--",
        sys.executable, str(FINETUNE_WORKER), *map(str, args),
    ]  # fmt: skip


def worker_env(**extra: str) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(FINETUNE_WORKER.parent), env.get("PYTHONPATH", "")])
    return env


def run_finetune(*args, timeout: float = 200.0) -> subprocess.CompletedProcess:
    """Run the fine-tuning worker on 2 ranks to completion (bounded by ``timeout``)."""
    return subprocess.run(
        finetune_command(*args, timeout=timeout), env=worker_env(), capture_output=True, text=True,
        timeout=timeout + 30,
    )  # fmt: skip
