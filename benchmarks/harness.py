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

Nothing measured is lost to a time limit: inside :func:`streaming` every row is appended to its
CSV (written, flushed and fsynced) the moment its provider finishes, and inside
:func:`provider_cap` a provider that runs past its cap becomes a ``TIMEOUT`` row and the next one
starts (a GPU lease is short; one slow ``torch.compile`` must not cost the rows after it).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import datetime as _dt
import functools
import gc
import os
import signal
import statistics
import subprocess
import threading
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


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


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
        "transformers": _version("transformers"),  # the hf-* providers' library
        "peft": _version("peft"),
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
TIMEOUT = "TIMEOUT"


def failed(rows: list[dict]) -> list[dict]:
    """Rows whose provider raised (not merely unavailable here): the run should exit non-zero."""
    return [r for r in rows if str(r.get("skipped", "")).startswith(FAILED)]


def failure_summary(rows: list[dict]) -> str | None:
    """One line naming the FAILED providers (op and provider), or None when none failed."""
    bad = failed(rows)
    if not bad:
        return None
    return f"{len(bad)} provider(s) FAILED: " + "; ".join(f"{r['op']} {r['provider']}" for r in bad)


# ------------------------------------------------------------- rows as they are measured, caps

_SINKS: list[Callable[[dict], None]] = []  # called with every finished row (see streaming)
_CAP_S: list[float] = []  # innermost provider cap in seconds (see provider_cap)


class ProviderTimeout(BaseException):
    """A provider ran past its cap. A BaseException, so that a provider's own ``except Exception``
    (e.g. around a ``torch.compile`` call) cannot turn the cap into another kind of row."""


@contextlib.contextmanager
def streaming(csv_path: str | os.PathLike | None = None, *, echo: bool = True):
    """Inside, every row :func:`run_case` (or :func:`emit`) finishes is appended to ``csv_path``
    at once (one row per write, flushed and fsynced) and, with ``echo``, printed as one line: a
    run killed at its time limit keeps every row measured before."""

    def sink(row: dict) -> None:
        if csv_path is not None:
            write_csv([row], csv_path)
        if echo:
            print(f"[row] {row_line(row)}", flush=True)

    _SINKS.append(sink)
    try:
        yield
    finally:
        _SINKS.remove(sink)


def emit(rows: list[dict]) -> list[dict]:
    """Hand finished ``rows`` to the active :func:`streaming` sinks (suites that build their own
    rows call this; :func:`run_case` does it per provider). Returns ``rows``."""
    for row in rows:
        for sink in list(_SINKS):
            sink(row)
    return rows


@contextlib.contextmanager
def provider_cap(seconds: float | None):
    """Inside, :func:`run_case` gives each provider (factory, warm-up and timing together) at most
    ``seconds``; one that runs longer becomes a ``TIMEOUT`` row. None or 0: no cap."""
    _CAP_S.append(float(seconds or 0.0))
    try:
        yield
    finally:
        _CAP_S.pop()


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise ProviderTimeout in the main thread after ``seconds`` (SIGALRM); no-op without a cap
    or off the main thread. A long C call is interrupted when it returns to Python; the caller's
    outer ``timeout`` (run_gpu.sh) is the backstop for a call that never does."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum, frame):
        raise ProviderTimeout(f"{TIMEOUT}: over the {seconds:g} s provider cap")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
    provider that raises anything but ``Unavailable`` gets a ``FAILED ...`` row, see :func:`failed`;
    one past the :func:`provider_cap` a ``TIMEOUT ...`` row).

    The baseline runs first, then the others in order; each row is complete (ratio included) when
    its provider ends and goes to the :func:`streaming` sinks right then. The ratio column is
    baseline p50 / provider p50 (> 1 means faster than the baseline), both measured in this run.
    """
    env = environment(device)
    peaks = device_peaks(device)
    cap = _CAP_S[-1] if _CAP_S else 0.0
    order = sorted(providers, key=lambda name: name != baseline)  # stable: the baseline first
    rows, base = [], None
    for name in order:
        row = {"op": case.op, "provider": name, "shape": case.shape, "dtype": case.dtype, "mode": case.mode}
        row.update(baseline=baseline or "", **env)
        fn = None
        try:
            with _alarm(cap):
                fn = providers[name]()
                timing = time_fn(fn, device, warmup=warmup, repeats=repeats, memory=memory)
        except Unavailable as exc:
            row["skipped"] = str(exc)
        except ProviderTimeout as exc:
            row["skipped"] = str(exc)
        except Exception as exc:  # a broken provider is a FAILED row; the others still run
            traceback.print_exc()
            row["skipped"] = f"{FAILED} {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        else:
            row.update(
                p20_ms=timing.p20_ms,
                p50_ms=timing.p50_ms,
                p80_ms=timing.p80_ms,
                peak_mem_mb=timing.peak_mem_mb,
            )
            row.update(_metrics(case, timing, peaks))
            if name == baseline:
                base = row
            if base is not None:
                row["ratio_vs_baseline"] = base["p50_ms"] / row["p50_ms"]
                if base.get("peak_mem_mb") and row.get("peak_mem_mb") is not None:
                    row["mem_vs_baseline"] = row["peak_mem_mb"] / base["peak_mem_mb"]
        del fn
        if "p50_ms" not in row:
            _free(device)
        rows.append(row)
        emit([row])
    return rows


CSV_FIELDS = [
    "op", "provider", "shape", "dtype", "mode", "p20_ms", "p50_ms", "p80_ms", "tflops", "gbps",
    "pct_peak", "tokens_per_s", "peak_mem_mb", "baseline", "ratio_vs_baseline", "mem_vs_baseline",
    "flag", "skipped", "device", "torch", "triton", "cuda", "commit", "timestamp", "transformers", "peft", "note",
]  # fmt: skip


def _upgrade_header(path: Path, fields: list[str]) -> None:
    """Rewrite a CSV written with an older column list under ``fields`` (old rows keep their
    values, new columns stay blank), so that appended rows line up with the header."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames == fields:
            return
        rows = list(reader)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_csv(rows: list[dict], path: str | os.PathLike, fields: list[str] = CSV_FIELDS) -> Path:
    """Append ``rows`` to the CSV at ``path`` (header written when the file is new, brought up to
    ``fields`` when the file has an older one), flushed and fsynced before returning: what was
    appended survives the process being killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _upgrade_header(path, fields)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in fields})
        f.flush()
        os.fsync(f.fileno())
    return path


def row_line(row: dict) -> str:
    """One row as one line: op, provider, shape, then p50 ms and the ratio, or why it was skipped."""
    head = f"{row['op']} | {row['provider']} | {row['shape']}"
    if "p50_ms" not in row:
        return f"{head} | skipped: {row.get('skipped', '')}"
    ratio = row.get("ratio_vs_baseline")
    return f"{head} | {row['p50_ms']:.3f} ms" + (
        "" if ratio is None else f" | {ratio:.3g}x {row['baseline']}"
    )


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
    """``python -m ptft_fast.benchmarks.bench_<name> [--quick]``: run, print, append CSV (each row
    as it is measured), plot."""
    import sys

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    csv_path = RESULTS_DIR / f"{name}.csv"
    with streaming(csv_path):
        rows = suite(device, "--quick" in sys.argv)
    print(format_table(rows))
    print(f"rows appended to {csv_path}")
    print(f"plot written to {plot(rows, RESULTS_DIR / f'{name}.png', title)}")
