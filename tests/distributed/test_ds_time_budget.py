"""A time-budgeted DeepSpeed run: every rank acts on one elapsed time, so all stop at the same step
(each rank's own clock stopped one rank while the other waited in a collective for ever)."""

from __future__ import annotations

import re

import pytest
from ds_testlib import run_ds, sets, train_losses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_time_budget_ranks_stop_at_the_same_step(new_run):
    out = new_run("budget")
    done = run_ds(out, ["--zero-stage", "1", *sets(out=out, max_steps=0, warmup_steps=-1, max_time_s=4)])
    assert done.returncode == 0, done.stderr[-3000:]
    stops = re.findall(r"max_time_s=4.0 reached at step (\d+)", done.stdout + done.stderr)
    assert len(stops) == 2 and stops[0] == stops[1], done.stdout[-2000:]
    assert "no step cap: max_steps not given" in done.stdout
    steps = int(stops[0])
    assert steps > 4 and max(train_losses(out)) == steps
