"""Shared test setup.

Triton kernels run on CPU only under TRITON_INTERPRET=1, which must be set before any kernel is
decorated: set it here when no GPU is visible. Tests marked ``gpu`` are skipped without CUDA.
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

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
    lease) still shows why what failed failed."""
    in_worker = "PYTEST_XDIST_WORKER" in os.environ  # xdist: the controller prints it once
    if report.failed and os.environ.get("PTFT_LIVE_FAILURES") == "1" and not in_worker:
        sys.stderr.write(
            f"\n=== LIVE FAILURE {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n"
        )
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
