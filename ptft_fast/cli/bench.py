"""``ptft bench ops|train|all|card``: run the benchmark suites, print a table, append CSV, plot.

Each row is appended to the CSV the moment its provider is measured, so a run stopped at a time
limit keeps what it measured; ``--provider-cap`` bounds each provider (a slow one becomes a
``TIMEOUT`` row and the next starts). ``ptft bench card``: the kernel report card (every kernel
compiled for sm_90/sm_80 on this machine, no GPU needed); see ``ptft_fast.benchmarks.kernel_card``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time
from pathlib import Path

import torch

from ptft_fast.benchmarks import harness
from ptft_fast.cli.errors import UsageError, int_at_least

DESCRIPTION = """Run the benchmark suites (benchmarks/bench_*.py): ops (the fused kernels against their references)
and train (model train steps, generation, end to end against Hugging Face), print a table, append
the rows to a CSV (device, CPU model, versions, commit) and optionally plot them. card: the kernel
report card, every Triton and CUDA kernel compiled for sm_90/sm_80 on this machine (no GPU needed),
registers, spills, shared memory, atomics, tensor-core instructions, with a CI gate (--gate)."""

EXAMPLES = """examples:
  ptft bench ops --quick --only reference,attention --plot reference.png
  ptft bench train --quick --device cpu
  ptft bench card --gate
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark ops and training steps", description=DESCRIPTION, epilog=EXAMPLES
    )
    p.add_argument(
        "group",
        nargs="?",
        default="ops",
        choices=("ops", "train", "all", "card"),
        help="which suites to run; card = the kernel report card (compiles every kernel, no GPU needed)",
    )
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (under a minute on CPU)")
    p.add_argument(
        "--only", default=None, help="comma-separated suite names, e.g. reference,attention (default: all)"
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="cpu or cuda (default: cuda when available)"
    )
    p.add_argument(
        "--csv", default=None, help="CSV to append rows to (default: benchmarks/results/<group>.csv)"
    )
    p.add_argument("--plot", default=None, help="PNG to write a chart to (default: none)")
    p.add_argument(
        "--provider-cap",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="at most this long per provider (setup, warm-up and timing); over it the row says TIMEOUT",
    )
    p.add_argument(
        "--write-auto-table",
        action="store_true",
        help="after the run, rank the compiled backends per op from benchmarks/results/*.csv (GPU rows) "
        "into ptft_fast/ops/auto_backends.json, which backend='auto' follows on CUDA (default: off)",
    )
    card = p.add_argument_group("card (ptft bench card)")
    card.add_argument("--gate", action="store_true", help="exit 1 when a CI rule fails (each one listed)")
    card.add_argument(
        "--doc", default=None, help="markdown file whose kernel-card section is rewritten (default: none)"
    )
    card.add_argument("--archs", type=_archs, default=[90, 80], help="compute capabilities (default 90,80)")
    card.add_argument(
        "--jobs", type=int_at_least(1), default=None, help="parallel compiles (default: CPU count)"
    )
    card.add_argument("--csrc", choices=("compile", "skip"), default="compile",
                      help="csrc rows by nvcc -Xptxas -v -keep (skipped when nvcc is missing)")  # fmt: skip
    card.add_argument(
        "--csrc-logs",
        default=None,
        help="folder of nvcc -Xptxas -v logs (*.log) and PTX (*.ptx) to read instead of compiling, as "
        ".ci/check_csrc.sh writes with PTXAS_LOG_DIR (default: none)",
    )
    p.set_defaults(func=run)


def _archs(text: str) -> list[int]:
    """``"90,80"`` → [90, 80]: the GPUs the card knows (sm_90, sm_80)."""
    values = [a.strip() for a in text.split(",")]
    if not values or any(a not in ("90", "80") for a in values):
        raise argparse.ArgumentTypeError(f"must be 90 and/or 80, comma-separated, got {text!r}")
    return [int(a) for a in values]


def _check_card_paths(args: argparse.Namespace) -> None:
    if args.csrc_logs is not None and not Path(args.csrc_logs).is_dir():
        raise UsageError(f"--csrc-logs {args.csrc_logs!r} is not a folder")
    if args.doc is not None:
        from ptft_fast.benchmarks.kernel_card import DOC_BEGIN, DOC_END

        doc = Path(args.doc)
        if not doc.is_file():
            raise UsageError(f"--doc {args.doc!r} is not a file")
        text = doc.read_text(errors="replace")
        if DOC_BEGIN not in text or DOC_END not in text:
            raise UsageError(f"--doc {args.doc!r} has no {DOC_BEGIN} … {DOC_END} section for the card")


def suites(group: str) -> dict[str, object]:
    """name → module for every benchmarks/bench_<name>.py whose KIND is in ``group``."""
    import ptft_fast.benchmarks as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("bench_"):
            continue
        module = importlib.import_module(f"ptft_fast.benchmarks.{info.name}")
        if not hasattr(module, "suite"):  # a stand-alone script (bench_transfer, bench_data_path)
            continue
        if group == "all" or getattr(module, "KIND", None) == group:
            found[info.name.removeprefix("bench_")] = module
    return found


def run(args: argparse.Namespace) -> int:
    for option, path in (("--csv", args.csv), ("--plot", args.plot)):
        if path is not None and Path(path).is_dir():
            raise UsageError(f"{option} {path!r} is a folder, not a file")
    if args.group == "card":
        from ptft_fast.benchmarks.kernel_card import main

        _check_card_paths(args)
        return main(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False)")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = suites(args.group)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(chosen))
        if unknown or not wanted:
            raise UsageError(f"--only {args.only!r}: unknown suite(s) {unknown}; available: {sorted(chosen)}")
        chosen = {name: chosen[name] for name in wanted}
    if not chosen:
        raise UsageError(f"no benchmark suites for group {args.group!r}")
    if args.provider_cap < 0:
        raise UsageError(f"--provider-cap must be >= 0 seconds, got {args.provider_cap}")
    rows = []
    start = time.time()
    csv_path = args.csv or harness.RESULTS_DIR / f"{args.group}{'-quick' if args.quick else ''}.csv"
    with harness.streaming(csv_path), harness.provider_cap(args.provider_cap):
        for name, module in chosen.items():
            print(f"[ptft bench] {name} on {harness.device_name(device)} ...", flush=True)
            rows += module.suite(device, args.quick)
    print(harness.format_table(rows))
    print(f"[ptft bench] {len(rows)} rows appended to {csv_path}")
    if args.plot:
        print(
            f"[ptft bench] plot written to {harness.plot(rows, args.plot, title=f'ptft bench {args.group}')}"
        )
    if args.write_auto_table:
        from ptft_fast.benchmarks.auto_table import write_auto_table
        from ptft_fast.ops.dispatch import _AUTO_TABLE_PATH

        table = write_auto_table(sorted(harness.RESULTS_DIR.glob("*.csv")), _AUTO_TABLE_PATH)
        print(f"[ptft bench] auto backend order on CUDA: {table['cuda']} → {_AUTO_TABLE_PATH}")
    print(f"[ptft bench] done in {time.time() - start:.1f} s")
    if summary := harness.failure_summary(rows):
        print(f"[ptft bench] {summary}")
        return 1
    return 0
