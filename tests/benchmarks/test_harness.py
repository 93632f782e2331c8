"""The benchmark harness: timing percentiles, CSV rows with device and versions, sanity guards."""

import contextlib
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
    for field in ("device", "torch", "triton", "cuda", "commit", "timestamp", "transformers", "peft"):
        assert read[0][field], field
    assert read[0]["torch"] == torch.__version__


def test_appending_to_a_csv_with_an_older_header_keeps_columns_aligned(tmp_path):
    old = [f for f in harness.CSV_FIELDS if f not in ("transformers", "peft")]
    path = tmp_path / "r.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old)
        writer.writeheader()
        writer.writerow({**dict.fromkeys(old, ""), "op": "old", "commit": "abc", "timestamp": "t0"})
    harness.write_csv([{"op": "new", "commit": "def", "transformers": "9.9"}], path)
    read = list(csv.DictReader(path.open()))
    assert [r["op"] for r in read] == ["old", "new"] and [r["commit"] for r in read] == ["abc", "def"]
    assert read[0]["timestamp"] == "t0" and read[0]["transformers"] == "" and read[1]["transformers"] == "9.9"


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


def test_streaming_writes_each_row_before_the_next_provider_starts(tmp_path):
    out = tmp_path / "rows.csv"
    x = torch.randn(16, 16)
    seen_on_disk = []

    def second():
        # the baseline's row must already be on disk, complete, when the next provider starts
        seen_on_disk.extend(csv.DictReader(out.open()))
        return lambda: x @ x

    case = Case("matmul", "16x16", "float32", "fwd", flops=2 * 16**3)
    with harness.streaming(out, echo=False):
        rows = run_case(
            case, {"b": second, "a": lambda: lambda: x @ x}, torch.device("cpu"),
            baseline="a", warmup=1, repeats=2,
        )  # fmt: skip
    assert [r["provider"] for r in rows] == ["a", "b"]  # the baseline runs first
    assert [r["provider"] for r in seen_on_disk] == ["a"] and float(seen_on_disk[0]["p50_ms"]) > 0
    assert seen_on_disk[0]["ratio_vs_baseline"] == "1"
    on_disk = list(csv.DictReader(out.open()))
    assert [r["provider"] for r in on_disk] == ["a", "b"] and float(on_disk[1]["ratio_vs_baseline"]) > 0


def test_a_provider_past_its_cap_is_a_timeout_row_and_the_next_one_runs(tmp_path):
    import time

    x = torch.randn(8, 8)

    def slow():
        def step():
            time.sleep(0.05)

        return step

    def catches_everything():  # a provider's own `except Exception` must not swallow the cap
        with contextlib.suppress(Exception):
            time.sleep(5)
        return lambda: x @ x

    case = Case("matmul", "8x8", "float32", "fwd")
    with harness.provider_cap(0.3), harness.streaming(tmp_path / "r.csv", echo=False):
        rows = run_case(
            case, {"fast": lambda: lambda: x @ x, "slow": slow, "stuck": catches_everything, "after": lambda: lambda: x @ x},
            torch.device("cpu"), baseline="fast", warmup=1, repeats=20, memory=False,
        )  # fmt: skip
    by = {r["provider"]: r for r in rows}
    assert by["slow"]["skipped"].startswith("TIMEOUT") and by["stuck"]["skipped"].startswith("TIMEOUT")
    assert by["fast"]["p50_ms"] > 0 and by["after"]["p50_ms"] > 0
    assert harness.failed(rows) == []  # a cut provider is reported, not counted as broken
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 4
