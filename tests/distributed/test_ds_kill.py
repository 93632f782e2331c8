"""A rank killed mid-run: the watchdog launcher ends the job non-zero naming the lost rank, and the
job resumes from the last checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from ds_testlib import ds_command, run_ds, sets, train_losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_killed_rank_is_named_and_job_resumes(new_run):
    out = new_run("killed")
    args = ["--zero-stage", "2", *sets(out=out, max_steps=200, save_every=2)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        ds_command(out, args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pids = {}
        while len(pids) < 2:
            m = re.match(r"ptft launch: rank (\d+) pid (\d+)", proc.stdout.readline())
            if m:
                pids[int(m.group(1))] = int(m.group(2))
        latest = out / "checkpoints" / "latest"
        deadline = time.monotonic() + 40
        while not latest.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.2)
        os.kill(pids[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert f"rank 1 (pid {pids[1]}) was killed by SIGKILL" in stderr
    saved = int(latest.read_text().strip().removeprefix("step_"))
    assert saved >= 2
    resumed = run_ds(
        out, ["--zero-stage", "2", "--resume", "latest", *sets(out=out, max_steps=saved + 2, save_every=2)]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = train_losses(out)
    assert max(losses) == saved + 2 and all(s in losses for s in range(1, saved + 3))
