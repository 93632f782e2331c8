"""benchmarks/run_gpu.sh --rehearse: a run killed mid-benchmark keeps every row it measured, and
pytest results are persisted per test as they finish."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from installed import import_or_skip

import_or_skip("transformers")

ROOT = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc: children of children too)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the script and everything it started (timeout puts its command in its own group)."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


@pytest.mark.slow  # ~30 s; tests/benchmarks/test_harness.py checks the per-row writes in a second
def test_a_rehearsal_killed_mid_benchmark_keeps_the_finished_rows(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "STEPS": "e2e_bert128", "PYTHON": sys.executable}
    proc = subprocess.Popen(
        ["bash", "benchmarks/run_gpu.sh", "--rehearse"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    table, log = out / "work" / "train_e2e.csv", out / "work" / "e2e_bert128.log"
    try:
        deadline = time.monotonic() + 240
        # hf-eager, then ptft:triton (interpreted), then hf-compile (tens of seconds on CPU): kill
        # once the first two rows are on disk, while the benchmark is still running
        while len(_rows(table)) < 2:
            assert proc.poll() is None, f"the rehearsal ended early:\n{(out / 'summary.txt').read_text()}"
            assert time.monotonic() < deadline, "no two rows on disk within 240 s"
            time.sleep(0.2)
        finished = "rows appended to" in log.read_text()
    finally:
        _kill_tree(proc)
    assert not finished, "the benchmark had already ended: this run proves nothing about a kill"
    rows = _rows(table)
    assert [r["provider"] for r in rows][:2] == ["hf-eager", "ptft:triton"]
    for row in rows[:2]:  # complete rows: timing, ratio and the environment columns
        assert float(row["p50_ms"]) > 0 and float(row["ratio_vs_baseline"]) > 0, row
        assert row["device"].startswith("CPU") and row["commit"] and row["timestamp"], row
        assert row["op"] == "bert_mlm" and "T=32" in row["shape"], row
    assert table.read_text().endswith("\n")  # no torn last line
    assert "[row] bert_mlm | hf-eager" in log.read_text()  # each row echoed as it was measured
    summary = (out / "summary.txt").read_text()
    assert "start e2e_bert128 (cap 150s)" in summary and "SKIP install" in summary


def test_pytest_outcomes_are_appended_per_test(tmp_path):
    log = tmp_path / "tests.jsonl"
    ids = [
        "tests/benchmarks/test_harness.py::test_time_fn_percentiles_are_ordered",
        "tests/benchmarks/test_harness.py::test_results_beyond_the_device_peak_are_flagged_not_reported",
    ]
    env = {**os.environ, "PTFT_TEST_LOG": str(log)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=ROOT, env=env, timeout=300
    )
    assert done.returncode == 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["nodeid"] for e in entries] == ids
    assert all(e["outcome"] == "passed" and e["phase"] == "call" and e["seconds"] >= 0 for e in entries)


@pytest.mark.parametrize("index", [0, 1], ids=["bert_mlm", "gpt2_clm"])
def test_triton_warmup_launches_the_triton_kernels_of_a_workload(index, monkeypatch):
    import_or_skip("triton")
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from ptft_fast.benchmarks.bench_train_e2e import TINY
    from ptft_fast.benchmarks.triton_warmup import warm

    launched = set()
    real = InterpretedFunction.run
    monkeypatch.setattr(
        InterpretedFunction,
        "run",
        lambda self, *a, **k: launched.add(self.fn.__name__) or real(self, *a, **k),
    )
    assert warm(TINY[index], torch.device("cpu")) > 0
    # forward and backward kernels of every op the workload uses
    assert {"_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel", "_attention_fwd_kernel"} <= launched, launched
    assert any("linear_cross_entropy" in name for name in launched), launched
