"""The one benchmark harness of ptft_fast (importable as ``ptft_fast.benchmarks.harness``).

A benchmark script ``benchmarks/bench_<name>.py`` defines

    KIND = "ops"            # or "train": which `ptft bench ops|train|all` group runs it
    def suite(device: torch.device, quick: bool) -> list[dict]:
        ...                 # returns rows from run_case(...)

and builds each comparison with :func:`run_case`: a :class:`Case` (what is computed, with its
FLOP and byte counts) and providers (name → zero-argument factory returning the callable to
time; factories raise :class:`Unavailable` when the provider cannot run here). The harness does
warm-up + repeats, reports p20/p50/p80 ms, TFLOP/s and GB/s, % of the device peak (``ptft_fast.utils.device``),
peak memory (CUDA allocator, or resident-set high-water mark on CPU), the speed ratio vs a baseline provider measured in the same run, and flags results
that exceed the device's physical limits instead of reporting them. Rows carry device, versions,
git commit and timestamp; :func:`write_csv` appends them to ``benchmarks/results/*.csv``.
"""

from __future__ import annotations

import csv
import ctypes
import datetime as _dt
import functools
import gc
import os
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ptft_fast.utils.device import device_name, device_peaks

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Unavailable(Exception):
    """Raised by a provider factory when that provider cannot run here (message says why)."""


def _git_commit() -> str:
    """Short commit of this checkout; ``PTFT_COMMIT`` overrides it (copies without .git, e.g. a
    working tree shipped to a GPU machine)."""
    if os.environ.get("PTFT_COMMIT"):
        return os.environ["PTFT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, str]:
    """Device and version fields recorded on every row."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "commit": _git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class Case:
    """One benchmarked computation.

    op: op or model name; shape: human-readable sizes ("B=8 T=128 H=768"); dtype: "float32"...;
    mode: "fwd" | "fwd+bwd" | "step"; flops / bytes: work per call (None when not meaningful);
    tokens: tokens processed per call (for tokens/s), or None.
    """

    op: str
    shape: str
    dtype: str
    mode: str
    flops: float | None = None
    bytes: float | None = None
    tokens: int | None = None


@dataclass
class Timing:
    p20_ms: float
    p50_ms: float
    p80_ms: float
    peak_mem_mb: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _fix_malloc_thresholds() -> None:
    """Pin glibc's mmap/trim thresholds (128 KiB): its adaptive threshold would keep freed
    tensors resident and blur the peak; pinned, large buffers are mmapped and returned on free.
    Called when the harness is imported, before any benchmark allocates."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_fix_malloc_thresholds()


def cpu_peak_memory_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident-memory growth (MiB) during one call of ``fn``, in this process.

    The kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs right before
    the call and read back after it, relative to the resident set at the start; every provider
    is measured the same way. None where /proc does not offer this (non-Linux).
    """
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    gc.collect()
    base = _proc_status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    fn()
    return max(0, _proc_status_kb("VmHWM") - base) / 1024


def time_fn(
    fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 10, memory: bool = True
) -> Timing:
    """Warm up, then time ``repeats`` calls; percentiles in ms and peak memory in MiB."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = None
    if memory:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            peak = cpu_peak_memory_mb(fn)
    if len(times) == 1:
        times = times * 2
    q = statistics.quantiles(times, n=10, method="inclusive")
    return Timing(p20_ms=q[1], p50_ms=statistics.median(times), p80_ms=q[7], peak_mem_mb=peak)


def _metrics(case: Case, timing: Timing, peaks: dict[str, float] | None) -> dict:
    """Throughput columns; a value above the device's physical peak is flagged, not reported."""
    sec = timing.p50_ms / 1e3
    tflops = case.flops / sec / 1e12 if case.flops else None
    gbps = case.bytes / sec / 1e9 if case.bytes else None
    out = {"tflops": tflops, "gbps": gbps, "pct_peak": None, "tokens_per_s": None, "flag": ""}
    if case.tokens:
        out["tokens_per_s"] = case.tokens / sec
    if peaks is None:
        return out
    flop_peak = peaks.get(case.dtype)
    if case.dtype == "float32" and torch.backends.cuda.matmul.allow_tf32:
        flop_peak = peaks.get("tf32", flop_peak)
    pcts = []
    if tflops is not None and flop_peak:
        pcts.append(100.0 * tflops / flop_peak)
    if gbps is not None:
        pcts.append(100.0 * gbps / peaks["gbps"])
    if pcts:
        out["pct_peak"] = max(pcts)
    if out["pct_peak"] is not None and out["pct_peak"] > 100.0:
        out.update(tflops=None, gbps=None, pct_peak=None, tokens_per_s=None)
        out["flag"] = "exceeds device peak: timing or work count is wrong"
    return out


FAILED = "FAILED"


def failed(rows: list[dict]) -> list[dict]:
    """Rows whose provider raised (not merely unavailable here): the run should exit non-zero."""
    return [r for r in rows if str(r.get("skipped", "")).startswith(FAILED)]


def failure_summary(rows: list[dict]) -> str | None:
    """One line naming the FAILED providers (op and provider), or None when none failed."""
    bad = failed(rows)
    if not bad:
        return None
    return f"{len(bad)} provider(s) FAILED: " + "; ".join(f"{r['op']} {r['provider']}" for r in bad)


def run_case(
    case: Case,
    providers: dict[str, Callable[[], Callable[[], object]]],
    device: torch.device,
    *,
    baseline: str | None = None,
    warmup: int = 3,
    repeats: int = 10,
    memory: bool = True,
) -> list[dict]:
    """Time every provider on ``case``; one row each (skipped providers get a row saying why; a
    provider that raises anything but ``Unavailable`` gets a ``FAILED ...`` row, see :func:`failed`).

    The ratio column is baseline p50 / provider p50 (> 1 means faster than the baseline), both
    measured in this run.
    """
    env = environment(device)
    peaks = device_peaks(device)
    rows = []
    for name, factory in providers.items():
        row = {"op": case.op, "provider": name, "shape": case.shape, "dtype": case.dtype, "mode": case.mode}
        try:
            fn = factory()
            timing = time_fn(fn, device, warmup=warmup, repeats=repeats, memory=memory)
        except Unavailable as exc:
            row.update(skipped=str(exc), **env)
            rows.append(row)
            continue
        except Exception as exc:  # a broken provider is a FAILED row; the others still run
            traceback.print_exc()
            row.update(skipped=f"{FAILED} {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", **env)
            rows.append(row)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        row.update(
            p20_ms=timing.p20_ms, p50_ms=timing.p50_ms, p80_ms=timing.p80_ms, peak_mem_mb=timing.peak_mem_mb
        )
        row.update(_metrics(case, timing, peaks))
        row.update(env)
        rows.append(row)
        del fn
    base = next((r for r in rows if r["provider"] == baseline and "p50_ms" in r), None)
    for row in rows:
        if base is not None and "p50_ms" in row:
            row["ratio_vs_baseline"] = base["p50_ms"] / row["p50_ms"]
            if base.get("peak_mem_mb") and row.get("peak_mem_mb") is not None:
                row["mem_vs_baseline"] = row["peak_mem_mb"] / base["peak_mem_mb"]
        row["baseline"] = baseline or ""
    return rows


CSV_FIELDS = [
    "op", "provider", "shape", "dtype", "mode", "p20_ms", "p50_ms", "p80_ms", "tflops", "gbps",
    "pct_peak", "tokens_per_s", "peak_mem_mb", "baseline", "ratio_vs_baseline", "mem_vs_baseline",
    "flag", "skipped", "device", "torch", "triton", "cuda", "commit", "timestamp",
]  # fmt: skip


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})
    return path


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    """Plain-text table: ms p50 [p20–p80], throughput, % peak, memory, ratio vs baseline."""
    header = ["op", "provider", "shape", "dtype", "mode", "ms p50 [p20-p80]", "TFLOP/s", "GB/s", "tok/s", "%peak", "MiB", "x base"]  # fmt: skip
    lines = []
    for r in rows:
        if "p50_ms" not in r:
            lines.append(
                [
                    r["op"],
                    r["provider"],
                    r["shape"],
                    r["dtype"],
                    r["mode"],
                    "skipped: " + r.get("skipped", ""),
                ]
                + [""] * 6
            )
            continue
        lines.append([
            r["op"], r["provider"], r["shape"], r["dtype"], r["mode"],
            f"{r['p50_ms']:.3f} [{r['p20_ms']:.3f}-{r['p80_ms']:.3f}]",
            _short(r.get("tflops")), _short(r.get("gbps")), _short(r.get("tokens_per_s")),
            _short(r.get("pct_peak")), _short(r.get("peak_mem_mb")),
            _short(r.get("ratio_vs_baseline")) + (" !" if r.get("flag") else ""),
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def _short(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


PLOT_METRICS = {
    "p50_ms": ("ms (p50, lower is better)", False),
    "tokens_per_s": ("tokens/s (p50 step, higher is better)", True),
}  # column → (axis label, value printed on each bar); the y axis is log-scaled


def plot(rows: list[dict], path: str | os.PathLike, title: str = "", metric: str = "p50_ms") -> Path:
    """Bar chart of ``metric`` (a PLOT_METRICS key) per (op, shape) group and provider, device and
    versions in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, annotate = PLOT_METRICS[metric]
    timed = [r for r in rows if r.get(metric) is not None]
    groups = list(dict.fromkeys(f"{r['op']}\n{r['shape']}\n{r['dtype']} {r['mode']}" for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(providers)) / 2), 4.8))
    width = 0.8 / max(1, len(providers))
    for i, prov in enumerate(providers):
        xs, ys = [], []
        for g, group in enumerate(groups):
            for r in timed:
                if r["provider"] == prov and f"{r['op']}\n{r['shape']}\n{r['dtype']} {r['mode']}" == group:
                    xs.append(g + i * width)
                    ys.append(r[metric])
        bars = ax.bar(xs, ys, width=width, label=prov)
        if annotate:
            ax.bar_label(bars, fmt="%.3g", fontsize=6)
    ax.set_xticks([g + width * (len(providers) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=7)
    ax.set_ylabel(label)
    ax.set_yscale("log")
    env = timed[0] if timed else {}
    ax.set_title(
        f"{title}\n{env.get('device', '')} · torch {env.get('torch', '')} · triton {env.get('triton', '')} · "
        f"CUDA {env.get('cuda', '')} · {env.get('commit', '')}",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def single_thread_quick(suite: Callable[..., list[dict]]) -> Callable[..., list[dict]]:
    """Decorator for a ``suite(device, quick, ...)``: its quick mode on CPU runs with one torch
    thread (restored after). On a shared 2-core machine, intra-op threads beyond the free cores
    make every OpenMP region wait for a descheduled thread, which inflates the small ops of a
    quick run 10-100× (minutes instead of seconds, ratios near 1); the rows say threads=1."""

    @functools.wraps(suite)
    def wrapped(device: torch.device, quick: bool, *args, **kwargs) -> list[dict]:
        if not (quick and device.type == "cpu"):
            return suite(device, quick, *args, **kwargs)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return suite(device, quick, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapped


def run_script(suite: Callable[[torch.device, bool], list[dict]], name: str, title: str) -> None:
    """``python -m ptft_fast.benchmarks.bench_<name> [--quick]``: run, print, append CSV, plot."""
    import sys

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = suite(device, "--quick" in sys.argv)
    print(format_table(rows))
    print(f"rows appended to {write_csv(rows, RESULTS_DIR / f'{name}.csv')}")
    print(f"plot written to {plot(rows, RESULTS_DIR / f'{name}.png', title)}")
