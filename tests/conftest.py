"""Shared test setup.

Triton kernels run on CPU only under TRITON_INTERPRET=1, which must be set before any kernel is
decorated: set it here when no GPU is visible. Tests marked ``gpu`` are skipped without CUDA.
With PTFT_TEST_LOG=path, each test's outcome is appended to that JSON-lines file the moment it is
known (a GPU run cut at its time cap keeps every finished test's result).
"""

import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

# --import-mode=importlib keeps test folders off sys.path: put tests/ there for its helper modules
# (installed.import_or_skip)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_runtest_logreport(report):
    """With PTFT_LIVE_FAILURES=1, a failure's traceback is printed as soon as the test fails (also
    under xdist), not only in the summary at the end: a run cut off at a time limit (a short GPU
    lease) still shows why what failed failed. With PTFT_TEST_LOG, the outcome is persisted."""
    if "PYTEST_XDIST_WORKER" in os.environ:  # xdist: the controller sees every report, once
        return
    if report.failed and os.environ.get("PTFT_LIVE_FAILURES") == "1":
        sys.stderr.write(
            f"\n=== LIVE FAILURE {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n"
        )
        sys.stderr.flush()
    log = os.environ.get("PTFT_TEST_LOG")
    if log and (report.when == "call" or report.outcome != "passed"):  # one line per test
        _append_test_log(log, report)


def _append_test_log(path: str, report) -> None:
    """One JSON line {nodeid, phase, outcome, seconds, time[, error]}, flushed and fsynced."""
    entry = {
        "nodeid": report.nodeid,
        "phase": report.when,
        "outcome": report.outcome,
        "seconds": round(report.duration, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if report.failed:
        entry["error"] = report.longreprtext[-2000:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        entry["reason"] = str(report.longrepr[2])
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
