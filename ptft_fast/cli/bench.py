"""``ptft bench ops|train|all``: run the benchmark suites, print a table, append CSV, plot."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time

import torch

from ptft_fast.benchmarks import harness


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark ops and training steps", description=__doc__)
    p.add_argument("group", nargs="?", default="ops", choices=("ops", "train", "all"))
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (under a minute on CPU)")
    p.add_argument("--only", default=None, help="comma-separated suite names (e.g. reference,attention)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--csv", default=None, help="CSV to append rows to (default benchmarks/results/<group>.csv)"
    )
    p.add_argument("--plot", default=None, help="PNG to write a chart to")
    p.add_argument(
        "--write-auto-table",
        action="store_true",
        help="after the run, rank the compiled backends per op from benchmarks/results/*.csv (GPU rows) "
        "into ptft_fast/ops/auto_backends.json, which backend='auto' follows on CUDA",
    )
    p.set_defaults(func=run)


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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = suites(args.group)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(chosen))
        if unknown:
            raise ValueError(f"--only: unknown suite(s) {unknown}; available: {sorted(chosen)}")
        chosen = {name: chosen[name] for name in wanted}
    if not chosen:
        raise ValueError(f"no benchmark suites for group {args.group!r}")
    rows = []
    start = time.time()
    for name, module in chosen.items():
        print(f"[ptft bench] {name} on {harness.device_name(device)} ...", flush=True)
        rows += module.suite(device, args.quick)
    print(harness.format_table(rows))
    csv_path = args.csv or harness.RESULTS_DIR / f"{args.group}{'-quick' if args.quick else ''}.csv"
    print(f"[ptft bench] {len(rows)} rows appended to {harness.write_csv(rows, csv_path)}")
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
