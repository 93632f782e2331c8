"""The host-overhead benchmark: a row per op, mode and path (torch; triton and cuda with the launch
stubbed out) with the raw call beside it, and the stubbed paths really run their launchers."""

import csv
import subprocess
import sys
from pathlib import Path

from installed import import_or_skip

ROOT = Path(__file__).resolve().parents[2]


def test_rows_for_every_op_mode_and_path(tmp_path):
    out = tmp_path / "host.csv"
    # a process of its own: the cuda stand-in defines the torch.ops.ptft_fast namespace
    done = subprocess.run(
        [sys.executable, "-m", "ptft_fast.benchmarks.host_overhead", "--samples", "2", "--csv", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    ops = {"layer_norm", "layer_norm+residual", "attention", "linear_cross_entropy", "lora_linear"}
    got = {(r["op"], r["mode"], r["path"]) for r in rows}
    assert got == {
        (o, m, p) for o in ops for m in ("fwd", "fwd+bwd") for p in ("ptft:torch", "ptft:triton", "ptft:cuda")
    }
    for r in rows:
        assert float(r["raw_us"]) > 0 and float(r["ptft_us"]) > 0, r
        assert r["threads"] == "1" and r["device"].startswith("CPU") and r["commit"], r
        # the target is judged on the torch backend's forward call only
        assert (r["meets_target"] != "") == (r["path"] == "ptft:torch" and r["mode"] == "fwd"), r
    assert {r["dtype"] for r in rows if r["path"] == "ptft:cuda"} == {"bfloat16"}


def test_stubbed_triton_path_runs_the_launchers_not_the_kernels():
    import_or_skip("triton")
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    from ptft_fast import ops
    from ptft_fast.benchmarks.host_overhead import triton_launch_stubbed

    launches = []
    x, w = torch.randn(4, 16), torch.randn(16)
    real = InterpretedFunction.run
    with triton_launch_stubbed():
        stub = InterpretedFunction.run
        assert stub is not real and stub(None) is None  # a no-op in place of the interpreter's run
        InterpretedFunction.run = lambda self, *a, **k: launches.append(self) or stub(self, *a, **k)
        try:
            y = ops.layer_norm(x, w, backend="triton")
        finally:
            InterpretedFunction.run = stub
    assert launches and y.shape == x.shape  # a launch was reached (and skipped): outputs allocated only
    assert InterpretedFunction.run is real
    y_real = ops.layer_norm(x, w, backend="triton")  # the stub is gone: the kernel computes again
    torch.testing.assert_close(y_real, torch.nn.functional.layer_norm(x, (16,), w), atol=1e-5, rtol=1e-5)
