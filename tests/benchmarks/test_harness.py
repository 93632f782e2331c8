"""The benchmark harness: timing percentiles, CSV rows with device and versions, sanity guards."""

import csv

import torch

from ptft_fast.benchmarks import harness
from ptft_fast.benchmarks.harness import Case, Unavailable, run_case
from ptft_fast.cli import main


def test_time_fn_percentiles_are_ordered():
    x = torch.randn(64, 64)
    t = harness.time_fn(lambda: x @ x, torch.device("cpu"), warmup=1, repeats=7)
    assert 0 < t.p20_ms <= t.p50_ms <= t.p80_ms


def test_cpu_peak_memory_sees_a_large_allocation():
    mib = harness.cpu_peak_memory_mb(lambda: torch.ones(16 * 2**20 // 4).sum())  # 16 MiB, freed after
    assert mib is not None and 14 < mib < 64


def test_run_case_rows_have_ratio_env_and_skips(tmp_path):
    x = torch.randn(128, 128)

    def unavailable():
        raise Unavailable("not on this machine")

    case = Case("matmul", "128x128", "float32", "fwd", flops=2 * 128**3, tokens=128)
    rows = run_case(
        case, {"a": lambda: lambda: x @ x, "b": lambda: lambda: (x @ x).relu(), "c": unavailable},
        torch.device("cpu"), baseline="a", warmup=1, repeats=3,
    )  # fmt: skip
    by = {r["provider"]: r for r in rows}
    assert by["a"]["ratio_vs_baseline"] == 1.0
    assert by["b"]["ratio_vs_baseline"] > 0
    assert by["c"]["skipped"] == "not on this machine"
    assert by["a"]["tflops"] > 0 and by["a"]["tokens_per_s"] > 0
    path = harness.write_csv(rows, tmp_path / "r.csv")
    read = list(csv.DictReader(path.open()))
    assert len(read) == 3
    for field in ("device", "torch", "triton", "cuda", "commit", "timestamp"):
        assert read[0][field], field
    assert read[0]["torch"] == torch.__version__


def test_a_provider_that_raises_is_a_failed_row_and_the_others_still_run():
    x = torch.randn(32, 32)

    def broken():
        def step():
            raise TypeError("weight has dtype torch.float32 but hidden has torch.bfloat16")

        return step

    case = Case("matmul", "32x32", "float32", "fwd", flops=2 * 32**3)
    rows = run_case(
        case, {"a": broken, "b": lambda: lambda: x @ x, "c": lambda: lambda: x @ x},
        torch.device("cpu"), baseline="b", warmup=1, repeats=3,
    )  # fmt: skip
    by = {r["provider"]: r for r in rows}
    assert by["a"]["skipped"].startswith("FAILED TypeError: weight has dtype")
    assert "p50_ms" not in by["a"]
    assert by["b"]["p50_ms"] > 0 and by["c"]["p50_ms"] > 0
    assert harness.failed(rows) == [by["a"]]
    assert harness.failed([by["b"], {"skipped": "needs a CUDA device"}]) == []


def test_results_beyond_the_device_peak_are_flagged_not_reported():
    peaks = {"bfloat16": 100.0, "gbps": 1000.0}
    timing = harness.Timing(p20_ms=1.0, p50_ms=1.0, p80_ms=1.0, peak_mem_mb=None)
    fine = harness._metrics(Case("x", "s", "bfloat16", "fwd", flops=50e9), timing, peaks)
    assert fine["tflops"] == 50.0 and fine["pct_peak"] == 50.0 and not fine["flag"]
    impossible = harness._metrics(Case("x", "s", "bfloat16", "fwd", bytes=5e9), timing, peaks)
    assert impossible["gbps"] is None and impossible["pct_peak"] is None
    assert "exceeds device peak" in impossible["flag"]


def test_ptft_bench_quick_writes_csv_and_plot(tmp_path, capsys):
    out_csv, out_png = tmp_path / "ops.csv", tmp_path / "ops.png"
    code = main(
        ["bench", "ops", "--quick", "--only", "reference", "--csv", str(out_csv), "--plot", str(out_png)]
    )
    assert code == 0
    rows = list(csv.DictReader(out_csv.open()))
    ops_seen = {r["op"] for r in rows}
    assert {"layer_norm+residual", "attention causal", "lora_linear"} <= ops_seen
    assert all(r["device"].startswith("CPU") for r in rows)
    assert out_png.stat().st_size > 1000
    assert "ptft-torch" in capsys.readouterr().out


def test_ptft_bench_unknown_suite_is_an_error(capsys):
    assert main(["bench", "ops", "--only", "nope"]) == 2
    assert "unknown suite" in capsys.readouterr().err
