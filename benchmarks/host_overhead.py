"""Host overhead of each public op: per-call time on tiny tensors (where the launch, not the math,
decides) against the raw PyTorch call that computes the same thing, on CPU.

Paths, one row each per op and mode:

=============  =================================================================================
ptft:torch     the public op as the models call it (``backend=None`` → auto → torch on CPU):
               input checks, dispatch, the reference. Target: ≤ 5 µs over the raw call.
ptft:triton    ``backend="triton"``: checks, dispatch, the ``torch.library`` custom op and its
               autograd wiring, the launcher (allocation, grid, argument preparation); the kernel
               launch itself is stubbed out (Triton's interpreter's ``run`` replaced by a no-op).
ptft:cuda      the cuda backend: checks, dispatch, argument adaptation, the dispatcher call of
               ``torch.ops.ptft_fast`` and its autograd; the ops are ``benchmarks/cuda_stub.py``'s
               CPU stand-ins that only allocate their outputs (no extension is built here; they
               are Python, the real ones C++: an upper bound). bf16 inputs (its kernels take half
               precision). Dispatched through the torch backend's registry slot, since
               ``backend="cuda"`` refuses CPU tensors (the dispatch code path is the same).
=============  =================================================================================

The raw call runs in float32 on every row (bf16 matmuls on CPU are slow compute, not host
work); for the stubbed paths it includes its tiny CPU compute, so their overhead is a bound.

Modes: ``fwd`` (inputs without grad) and ``fwd+bwd`` (inputs require grad; backward of the
output's sum, raw likewise). Time per call: the calling thread's CPU time (``time.thread_time``:
host work is CPU work, and time the thread spends descheduled by other processes on a shared
machine is not counted) over ``n`` calls per sample, raw and ptft samples interleaved (ABBA);
the overhead is the median of the paired differences, with its p20–p80. One torch thread.

Run: ``python -m ptft_fast.benchmarks.host_overhead [--samples N] [--csv PATH]`` → table and
``benchmarks/results/host_overhead_cpu.csv`` (rows appended as measured).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated: CPU tensors

import torch
import torch.nn.functional as F

from ptft_fast import ops
from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv
from ptft_fast.ops import dispatch

TARGET_US = 5.0  # ptft:torch over the raw call
FIELDS = [
    "op", "path", "mode", "shape", "dtype", "raw_us", "ptft_us", "overhead_us", "overhead_p20_us",
    "overhead_p80_us", "target_us", "meets_target", "calls_per_sample", "samples", "threads", "device",
    "torch", "triton", "commit", "timestamp",
]  # fmt: skip
OPS = ("layer_norm", "layer_norm+residual", "attention", "linear_cross_entropy", "lora_linear")


def _tensors(dtype: torch.dtype, grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_(grad)

    labels = torch.tensor([3, -100, 5, 0, -100, 7, 1, 2])
    return dict(
        x=r(8, 64), res=r(8, 64), w=r(64), b=r(64), q=r(1, 8, 2, 64), k=r(1, 8, 2, 64), v=r(1, 8, 2, 64),
        h=r(8, 64), emb=r(128, 64, scale=0.1), labels=labels, lin=r(64, 64, scale=0.1), a=r(4, 64, scale=0.1),
        bb=r(64, 4, scale=0.1),
    )  # fmt: skip


SHAPES = {
    "layer_norm": "x (8, 64)",
    "layer_norm+residual": "x, residual (8, 64)",
    "attention": "q, k, v (1, 8, 2, 64)",
    "linear_cross_entropy": "hidden (8, 64), weight (128, 64), 6 labeled",
    "lora_linear": "x (8, 64), weight (64, 64), r=4",
}


def calls(t: dict[str, torch.Tensor]) -> dict[str, tuple[Callable, Callable]]:
    """op → (raw PyTorch call, ptft public op) on the tensors ``t``."""

    def sdpa():
        q, k, v = (t[n].transpose(1, 2) for n in "qkv")
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)

    return {
        "layer_norm": (
            lambda: F.layer_norm(t["x"], (64,), t["w"], t["b"], 1e-5),
            lambda: ops.layer_norm(t["x"], t["w"], t["b"], 1e-5),
        ),
        "layer_norm+residual": (
            lambda: F.layer_norm(t["x"] + t["res"], (64,), t["w"], t["b"], 1e-5),
            lambda: ops.layer_norm(t["x"], t["w"], t["b"], 1e-5, residual=t["res"]),
        ),
        "attention": (sdpa, lambda: ops.attention(t["q"], t["k"], t["v"])),
        "linear_cross_entropy": (
            lambda: F.cross_entropy(F.linear(t["h"], t["emb"]), t["labels"]),
            lambda: ops.linear_cross_entropy(t["h"], t["emb"], t["labels"]),
        ),
        "lora_linear": (
            lambda: F.linear(t["x"], t["lin"], t["b"]) + 2.0 * F.linear(F.linear(t["x"], t["a"]), t["bb"]),
            lambda: ops.lora_linear(t["x"], t["lin"], t["b"], t["a"], t["bb"], 2.0),
        ),
    }


def _with_backward(fn: Callable) -> Callable:
    def step():
        out = fn()
        out.float().sum().backward()

    return step


def _per_call_us(fn: Callable, n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - start) / n * 1e6


def paired(raw: Callable, ours: Callable, samples: int) -> dict:
    """Per-call µs of both, interleaved ABBA; overhead = median of the paired differences."""
    for fn in (raw, ours):
        for _ in range(20):
            fn()
    n = max(20, int(20_000 / max(_per_call_us(ours, 20), 1.0)))  # ~20 ms per sample
    raws, oursl = [], []
    for i in range(samples):
        pair = (raw, ours) if i % 2 == 0 else (ours, raw)
        got = {id(fn): _per_call_us(fn, n) for fn in pair}
        raws.append(got[id(raw)])
        oursl.append(got[id(ours)])
    diffs = [o - r for o, r in zip(oursl, raws, strict=True)]
    q = statistics.quantiles(diffs, n=10, method="inclusive")
    return dict(
        raw_us=statistics.median(raws),
        ptft_us=statistics.median(oursl),
        overhead_us=statistics.median(diffs),
        overhead_p20_us=q[1],
        overhead_p80_us=q[7],
        calls_per_sample=n,
        samples=samples,
    )


@contextlib.contextmanager
def triton_launch_stubbed():
    """The triton backend with every kernel launch a no-op (the launchers run in full)."""
    from triton.runtime.interpreter import InterpretedFunction

    ok, why = dispatch.backend_available("triton")
    if not ok:
        raise RuntimeError(f"triton backend unavailable: {why}")
    real = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        InterpretedFunction.run = real


@contextlib.contextmanager
def cuda_path_stubbed():
    """The cuda backend's implementations in the torch backend's registry slot, over the CPU
    stand-ins of benchmarks/cuda_stub.py (outputs allocated, nothing computed)."""
    from ptft_fast.benchmarks import cuda_stub
    from ptft_fast.ops import cuda_backend as cb

    lib = cuda_stub.install(cpu_kernels=True)  # noqa: F841  (keeps the ops alive)
    impls = {
        "layer_norm": cb.layer_norm_cuda,
        "attention": cb.attention_cuda,
        "linear_cross_entropy": cb.linear_cross_entropy_cuda,
        "lora_linear": cb.lora_linear_cuda,
    }
    saved = {op: dispatch._REGISTRY[op]["torch"] for op in impls}
    dispatch._REGISTRY.update({op: {**dispatch._REGISTRY[op], "torch": fn} for op, fn in impls.items()})
    dispatch._AUTO_CACHE.clear()
    dispatch._EXPLICIT_CACHE.clear()
    try:
        yield
    finally:
        for op, fn in saved.items():
            dispatch._REGISTRY[op]["torch"] = fn
        dispatch._AUTO_CACHE.clear()
        dispatch._EXPLICIT_CACHE.clear()


def _rows_for(
    path: str, dtype: torch.dtype, samples: int, env: dict, sink: Callable[[dict], None]
) -> list[dict]:
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        grad = mode == "fwd+bwd"
        raws, ourss = calls(_tensors(torch.float32, grad)), calls(_tensors(dtype, grad))
        for op in OPS:
            raw, ours = raws[op][0], ourss[op][1]
            if path == "ptft:triton":
                ours = _explicit(ours, "triton")
            if mode == "fwd+bwd":
                raw, ours = _with_backward(raw), _with_backward(ours)
            row = dict(op=op, path=path, mode=mode, shape=SHAPES[op], dtype=str(dtype).removeprefix("torch."))
            row.update(paired(raw, ours, samples))
            if path == "ptft:torch" and mode == "fwd":  # the call's host overhead; the backward
                # runs the same autograd ops as the raw call's (its rows show the noise around that)
                row.update(target_us=TARGET_US, meets_target=row["overhead_us"] <= TARGET_US)
            row.update(threads=torch.get_num_threads(), **env)
            sink(row)
            rows.append(row)
    return rows


def _explicit(fn: Callable, backend: str) -> Callable:
    def call():
        with dispatch.use_backend(backend):
            return fn()

    return call


def run(samples: int, csv_path, paths=("ptft:torch", "ptft:triton", "ptft:cuda")) -> list[dict]:
    env = environment(torch.device("cpu"))
    env.pop("cuda")
    before = torch.get_num_threads()
    torch.set_num_threads(1)

    def sink(row):
        if csv_path is not None:
            write_csv([row], csv_path, FIELDS)
        print(
            f"[row] {row['op']:22s} {row['path']:12s} {row['mode']:8s} raw {row['raw_us']:7.2f} µs  "
            f"ptft {row['ptft_us']:7.2f} µs  overhead {row['overhead_us']:6.2f} µs",
            flush=True,
        )

    rows = []
    try:
        if "ptft:torch" in paths:
            rows += _rows_for("ptft:torch", torch.float32, samples, env, sink)
        if "ptft:triton" in paths:
            with triton_launch_stubbed():
                rows += _rows_for("ptft:triton", torch.float32, samples, env, sink)
        if "ptft:cuda" in paths:
            with cuda_path_stubbed():
                rows += _rows_for("ptft:cuda", torch.bfloat16, samples, env, sink)
    finally:
        torch.set_num_threads(before)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15, help="interleaved samples per row (>= 2)")
    parser.add_argument(
        "--csv", default=str(RESULTS_DIR / "host_overhead_cpu.csv"), help="CSV to append rows to"
    )
    parser.add_argument("--paths", default="ptft:torch,ptft:triton,ptft:cuda", help="comma-separated paths")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error(f"--samples must be >= 2, got {args.samples}")
    rows = run(args.samples, args.csv, tuple(p for p in args.paths.split(",") if p))
    misses = [r for r in rows if r.get("meets_target") is False]
    print(f"rows appended to {args.csv}")
    if misses:
        print(
            "over the target: "
            + "; ".join(f"{r['op']} {r['mode']} {r['overhead_us']:.2f} µs" for r in misses)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
