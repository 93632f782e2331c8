"""Checkpoints: kill -9 at a seeded random step (PTFT_KILL_SEED picks another) then --resume latest
continues exactly; kill -9 in the
middle of a checkpoint write leaves ``latest`` on a complete checkpoint; a changed model config
is refused."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptft_fast.cli import main
from ptft_fast.train.checkpoint import SLEEP_ENV, ResumeError, read_latest, resolve
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.trainer import Trainer

KILL_SEED = int(os.environ.get("PTFT_KILL_SEED", "20261205"))  # a failure names its seed: reproducible

pytestmark = pytest.mark.slow

# grad accumulation, dynamic MLM masking (collator RNG), documents split across rows
ARGS = ["--model", "bert-tiny-cpu", "--objective", "mlm", "--no-progress"]
SETS = dict(seq_len=32, micro_batch_size=4, grad_accum_steps=2, max_steps=14, save_every=3, log_every=1)
SETS.update(eval_every=0, eval_batches=1, plot="false")


def _argv(out: Path, **extra) -> list[str]:
    sets = [f"{k}={v}" for k, v in {**SETS, **extra}.items()]
    return [*ARGS, "--out", str(out), *[x for s in sets for x in ("--set", s)]]


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _spawn(argv: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "ptft_fast", "pretrain", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def test_kill9_then_resume_latest_is_exact(new_run):
    ref = new_run(name="ref")
    assert main(["pretrain", *_argv(ref)]) == 0
    expected = _losses(ref)
    assert sorted(expected) == list(range(1, 15))

    out = new_run(name="killed")
    kill_at = random.Random(KILL_SEED).randint(5, 11)  # a step between checkpoints or not
    where = f"kill at step >= {kill_at} (PTFT_KILL_SEED={KILL_SEED})"
    proc = _spawn(_argv(out))
    _wait_for(lambda: (out / "metrics.jsonl").is_file() and max(_losses(out), default=0) >= kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = max(_losses(out))
    latest = read_latest(out / "checkpoints")
    resumed_from = int(latest.split("_")[1])
    assert 3 <= resumed_from <= done < 14, where
    state = json.loads((out / "checkpoints" / latest / "state" / "trainer.json").read_text())
    assert state["data"]["stream"]["sampler"]["offset"] > 0  # not at a trivial data position

    assert main(["pretrain", *_argv(out), "--resume", "latest"]) == 0
    got = _losses(out)
    assert sorted(got) == list(range(1, 15))  # rows the killed run wrote after its checkpoint are replaced
    for step in range(resumed_from + 1, 15):
        assert got[step] == expected[step], f"step {step}: {got[step]!r} != {expected[step]!r}; {where}"
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == ["step_00000009", "step_00000012", "step_00000014"]  # keep_last=3


def test_kill9_during_checkpoint_write_keeps_latest_valid(new_run):
    out = new_run()
    assert main(["pretrain", *_argv(out, max_steps=3)]) == 0
    assert read_latest(out / "checkpoints") == "step_00000003"
    # continue; the step-6 checkpoint write pauses after the model files, then is killed
    proc = _spawn([*_argv(out, max_steps=9), "--resume", "latest"], {SLEEP_ENV: "120"})
    ckpts = out / "checkpoints"
    _wait_for(
        lambda: any((p / "model" / "config.json").is_file() for p in ckpts.glob(".tmp-step_00000006-*")), proc
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_latest(ckpts) == "step_00000003"
    assert not (ckpts / "step_00000006").exists()
    cfg = TrainConfig(**{**TrainConfig().to_dict(), **_cfg_dict(out, max_steps=4)})
    trainer = Trainer(cfg, resume="latest")  # loads model, optimizer, RNG and data state
    assert trainer.step == 3
    trainer.run()
    assert read_latest(ckpts) == "step_00000004"
    assert not list(ckpts.glob(".tmp-*"))  # the broken temp folder was cleaned up


def _cfg_dict(out: Path, **extra) -> dict:
    d = {**SETS, **extra, "model": "bert-tiny-cpu", "objective": "mlm", "out": str(out), "progress": False}
    d["plot"] = False
    return d


def test_changed_model_config_is_refused(new_run):
    out = new_run()
    assert main(["pretrain", *_argv(out, max_steps=1)]) == 0
    cfg = TrainConfig(**{**_cfg_dict(out, max_steps=2), "model": "bert-tiny"})
    with pytest.raises(ResumeError, match=r"model config changed in key\(s\) \[.*'hidden_size'.*\]"):
        Trainer(cfg, resume="latest")
    assert resolve("latest", out).name == "step_00000001"
    # the checkpoint holds no pickle: tensors are safetensors, the rest JSON
    files = {p.suffix for p in (out / "checkpoints").rglob("*") if p.is_file()}
    assert files <= {".json", ".safetensors", ""}, files
