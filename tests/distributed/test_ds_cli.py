"""`ptft pretrain --zero-stage N` works as typed, without a launcher (one rank)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.distributed
@pytest.mark.slow
def test_pretrain_cli_with_zero_stage_runs_as_one_rank(tmp_path):
    out = tmp_path / "run"
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env["DS_ACCELERATOR"] = "cpu"
    cmd = [sys.executable, "-m", "ptft_fast", "pretrain", "--model", "bert-tiny-cpu", "--objective", "mlm",
           "--zero-stage", "2", "--out", str(out), "--set", "max_steps=2", "--set", "vocab_size=512",
           "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "final" / "model.safetensors").exists()
