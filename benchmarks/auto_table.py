"""Build ``ptft_fast/ops/auto_backends.json`` — the order in which ``backend="auto"`` tries the
compiled backends per op on CUDA — from recorded benchmark CSVs.

For each op, only cases where several ptft backends were timed on the same GPU, shape and dtype
are compared; backends are ranked by the geometric mean of their p50 time relative to the
fastest on each case. Run via ``ptft bench --write-auto-table`` after a GPU benchmark run.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

OPS = ("layer_norm", "attention", "linear_cross_entropy", "lora_linear")


def _op_of(name: str) -> str | None:
    for op in OPS:
        if name == op or name.startswith((op + " ", op + "+", op + "-", op + "/")):
            return op
    return None


def rank_backends(rows: list[dict]) -> dict[str, list[str]]:
    """op → backends fastest first, from rows with provider ``ptft-<backend>`` timed on CUDA."""
    cases: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rows:
        op, provider = _op_of(row.get("op", "")), row.get("provider", "")
        if op is None or not provider.startswith("ptft-") or not row.get("p50_ms"):
            continue
        if row.get("device", "").startswith("CPU") or row.get("flag"):
            continue
        key = (op, row["device"], row["shape"], row["dtype"], row["mode"])
        cases[key][provider.removeprefix("ptft-")] = float(row["p50_ms"])
    rel: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (op, *_), times in cases.items():
        if len(times) < 2:
            continue
        best = min(times.values())
        for backend, t in times.items():
            rel[op][backend].append(math.log(t / best))
    table = {}
    for op, per_backend in rel.items():
        means = {b: sum(v) / len(v) for b, v in per_backend.items()}
        table[op] = sorted(means, key=means.get)
    return table


def write_auto_table(csv_paths: list[Path], out: Path) -> dict:
    rows = []
    for path in csv_paths:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    table = {"cuda": rank_backends(rows), "source": sorted(str(p.name) for p in csv_paths)}
    out.write_text(json.dumps(table, indent=2) + "\n")
    return table
