"""The fine-tuning loop on 2 DeepSpeed ranks (CPU accelerator, gloo) trains like one process: the
same losses step by step and the same final weights (ZeRO-1 and ZeRO-2, accumulation included,
micro-batches split across the ranks); its checkpoints are the engine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ds_finetune_worker import run, task_model
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ds_finetune_worker.py")


def _losses(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_two_ranks_train_like_one_process(tmp_path, stage):
    want = run(tmp_path / "one", None)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "ptft_fast.train.ds_launch", "--nproc", "2", "--timeout", "200", "--",
           sys.executable, str(WORKER), str(two), str(stage)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(two) == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)
    got = load_file(two / "final.safetensors")
    start = task_model().state_dict()
    # per element, AdamW moves a weight with a near-zero grad by ~lr·sign(grad), so the all-reduce's
    # summation order can flip single elements; the update as a whole must agree (and the losses,
    # which see every weight, agree to 1e-5 above)
    moved = torch.cat([(want[k] - start[k]).flatten() for k in want])
    diff = torch.cat([(got[k] - want[k]).flatten() for k in want])
    assert float(diff.norm()) < 1e-2 * float(moved.norm())
    assert (two / "checkpoints" / "latest").read_text().strip() == "step_00000004"
