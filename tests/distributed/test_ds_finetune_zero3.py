"""Fine-tuning on 2 DeepSpeed ranks (CPU accelerator, gloo) with ZeRO-3's partitioned parameters
trains like one process, and the kept model it saves is whole (it loads and predicts like the run's
final weights); a DeepSpeed fine-tuning job killed with SIGKILL mid-run resumes (``--resume
latest``) to the weights of the uninterrupted job."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from ds_finetune_worker import saved_model, saved_run, task_data
from ds_testlib import finetune_command, run_finetune, train_losses, worker_env, zero3_config
from safetensors.torch import load_file

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _logits(model, data):
    model.eval()
    with torch.no_grad():
        return model(input_ids=data["input_ids"], attention_mask=data["attention_mask"])["logits"]


def _steps_done(out) -> int:
    """The last step in OUT/metrics.jsonl while rank 0 may be writing it (0 before any)."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    steps = [json.loads(x)["step"] for x in lines[:-1] if '"train"' in x]  # the last may be partial
    return max(steps, default=0)


def test_zero3_trains_like_one_process_and_saves_the_whole_model(tmp_path, ft_base):
    from ptft_fast.finetune import saved

    want, want_history = saved_run(tmp_path / "one", ft_base)
    two = tmp_path / "two"
    z3 = zero3_config(tmp_path / "z3.json")  # every parameter partitioned (no persistent small ones)
    proc = run_finetune(two, "--base", ft_base, "--ds-json", z3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # float32 all-reduce of 2 partial gradients sums in another order than one process's batch:
    # ~1e-7 relative per reduction, grown through 4 AdamW steps; 1e-5 as for ZeRO-1/2
    assert train_losses(two) == pytest.approx(train_losses(tmp_path / "one"), rel=1e-5)
    history = json.loads((two / "done.json").read_text())["history"]
    assert [(r["step"], r["accuracy"]) for r in history] == [(r["step"], r["accuracy"]) for r in want_history]
    got = load_file(two / "final.safetensors")
    assert got.keys() == want.keys() and all(got[k].shape == want[k].shape for k in want)
    start, _, _, _ = saved_model(ft_base)
    start = start.state_dict()
    # per element AdamW moves a weight with a near-zero gradient by ~lr·sign(grad): the reduction
    # order can flip single elements, so the update as a whole must agree (as for ZeRO-1/2)
    moved = torch.cat([(want[k] - start[k]).flatten() for k in want])
    diff = torch.cat([(got[k] - want[k]).flatten() for k in want])
    assert float(diff.norm()) < 1e-2 * float(moved.norm())
    # OUT/best holds the kept model whole: it loads onto nothing but itself and equals the final
    # (restored best) weights exactly, and it predicts as the one-process run's kept model does
    kept = saved.load(two / "best")
    for k, t in kept.model.state_dict().items():
        torch.testing.assert_close(t, got[k], rtol=0, atol=0, msg=k)
    dev = task_data(8, seed=2)
    ref = saved.load(tmp_path / "one" / "best").model
    torch.testing.assert_close(_logits(kept.model, dev), _logits(ref, dev), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("stage", [2, 3])
def test_kill9_mid_run_then_resume_gives_the_uninterrupted_weights(tmp_path, ft_base, stage):
    zero = ("--ds-json", zero3_config(tmp_path / "z3.json")) if stage == 3 else (str(stage),)
    args = (*zero, "--base", ft_base, "--steps", "8", "--last")  # the last step's weights, not the best
    ref = tmp_path / "ref"
    proc = run_finetune(ref, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "killed"
    job = subprocess.Popen(finetune_command(out, *args), env=worker_env(PTFT_TEST_STEP_SLEEP="0.15"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    kill_at = random.Random(25).randint(3, 6)  # seeded: the step after which the whole job is killed
    latest = out / "checkpoints" / "latest"
    end = time.monotonic() + 150
    try:
        while not (latest.is_file() and _steps_done(out) >= kill_at):
            assert job.poll() is None, job.stderr.read().decode()[-3000:]
            assert time.monotonic() < end, "timed out"
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks, like a crash
        job.wait()
    saved_at = int(latest.read_text().strip().removeprefix("step_"))
    assert 2 <= saved_at < 8 and not (out / "done.json").exists()
    proc = run_finetune(out, *args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = load_file(out / "final.safetensors"), load_file(ref / "final.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert train_losses(out) == train_losses(ref)
    done = [json.loads((d / "done.json").read_text()) for d in (out, ref)]
    assert done[0]["history"] == done[1]["history"]


def test_ptft_finetune_zero3_on_two_ranks_then_predict(tmp_path, ft_base):
    """``ptft finetune --deepspeed z3.json`` as typed under the launcher: every rank scores --eval on
    the kept model (a ZeRO-3 forward is a collective), rank 0 writes OUT/best, and ``ptft predict``
    on that folder reproduces the eval accuracy task.json reports."""
    from ptft_fast.cli import main

    rows = [(f"{w} item {i} {'file path' if j < 4 else 'json object'}", "io" if j < 4 else "json")
            for i in range(2) for j, w in enumerate(("open", "close", "seek", "tell", "load", "dump", "parse", "encode"))]  # fmt: skip
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "ptft_fast.train.ds_launch", "--nproc", "2", "--timeout", "200", "--",
           sys.executable, "-m", "ptft_fast", "finetune", "--model", str(ft_base), "--task", "cls",
           "--train", str(data), "--dev", str(data), "--eval", str(data), "--batch-size", "4", "--max-steps", "4",
           "--eval-every", "2", "--deepspeed", str(zero3_config(tmp_path / "z3.json")), "--no-baselines",
           "--no-progress", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept the model of step" in proc.stdout
    card = json.loads((out / "best" / "task.json").read_text())
    assert (
        main(
            ["predict", "--model", str(out / "best"), "--input", str(data), "--out", str(tmp_path / "p.tsv")]
        )
        == 0
    )
    pred = [line.split("\t")[1] for line in (tmp_path / "p.tsv").read_text().splitlines()[1:]]
    accuracy = sum(p == y for p, (_, y) in zip(pred, rows, strict=True)) / len(rows)
    assert card["eval_metrics"]["accuracy"] == pytest.approx(accuracy)
