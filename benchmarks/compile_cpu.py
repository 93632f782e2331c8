"""Pre-training tokens/s on CPU with and without ``--compile`` (inductor, fullgraph) for the tiny
presets: BERT MLM, GPT-2 CLM and T5 span corruption, 128 tokens per row, 16 rows per step (the
``configs/pretrain-*-tiny.yaml`` shapes), the trainer's thread policy (1 thread for tiny models).

Both trainers read the same cached run data and start from the same weights. After warm-up steps
(the compiled one compiles in its first step, timed as ``compile_s``) their steps are timed
alternately (ABBA), so that load from other processes hits both alike; tokens/s is the steps'
tokens over their summed wall time, with the p20/p50/p80 step time. ``loss0`` is each run's
step-0 loss (compiled must equal eager's within 1e-5).

Run: ``python -m ptft_fast.benchmarks.compile_cpu [--steps N] [--csv PATH]`` → table and
``benchmarks/results/compile_cpu.csv`` (rows appended as measured).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv

RUNS = [("bert-tiny-cpu", "mlm"), ("gpt-tiny", "clm"), ("t5-tiny", "span")]
FIELDS = [
    "preset", "objective", "mode", "tokens_per_s", "step_ms_p20", "step_ms_p50", "step_ms_p80",
    "ratio_vs_eager", "compile_s", "loss0", "steps", "shape", "threads", "device", "torch", "commit",
    "timestamp",
]  # fmt: skip


def _trainer(data: Path, preset: str, objective: str, compiled: bool):
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.trainer import Trainer

    out = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(data / "data", out / "data")
    cfg = TrainConfig(
        model=preset, objective=objective, out=str(out), seq_len=128, micro_batch_size=16, max_steps=1000,
        progress=False, plot=False, compile=compiled,
    )  # fmt: skip
    return Trainer(cfg)


def measure(preset: str, objective: str, steps: int, warmup: int, env: dict, sink) -> list[dict]:
    from ptft_fast.train.build import tokenizer_kind
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.data import prepare_run_data

    data = Path(tempfile.mkdtemp())
    cfg = TrainConfig(model=preset, objective=objective)
    prepare_run_data(cfg, tokenizer_kind(cfg), data)
    trainers = {
        "eager": _trainer(data, preset, objective, False),
        "compile": _trainer(data, preset, objective, True),
    }
    loss0, first_s = {}, {}
    for mode, trainer in trainers.items():
        start = time.perf_counter()
        loss0[mode] = trainer.train_step().loss
        first_s[mode] = time.perf_counter() - start
        for _ in range(warmup - 1):
            trainer.train_step()
    times: dict[str, list[float]] = {m: [] for m in trainers}
    tokens: dict[str, int] = dict.fromkeys(trainers, 0)
    for r in range(steps):
        for mode in list(trainers)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            out = trainers[mode].train_step()
            times[mode].append(time.perf_counter() - start)
            tokens[mode] += out.tokens
    rows = []
    for mode in trainers:
        q = statistics.quantiles(times[mode], n=10, method="inclusive")
        row = dict(
            preset=preset, objective=objective, mode=mode, tokens_per_s=tokens[mode] / sum(times[mode]),
            step_ms_p20=q[1] * 1e3, step_ms_p50=statistics.median(times[mode]) * 1e3, step_ms_p80=q[7] * 1e3,
            compile_s=first_s[mode] - first_s["eager"] if mode == "compile" else None, loss0=loss0[mode],
            steps=steps, shape="B=16 T=128", threads=trainers[mode].cpu_threads, **env,
        )  # fmt: skip
        rows.append(row)
    for row in rows:
        row["ratio_vs_eager"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
        sink(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode (>= 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1; compiles)")
    parser.add_argument("--csv", default=str(RESULTS_DIR / "compile_cpu.csv"), help="CSV to append rows to")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.warmup < 1:
        parser.error("--steps must be >= 2 and --warmup >= 1")
    env = environment(torch.device("cpu"))
    for key in ("triton", "cuda"):
        env.pop(key)

    def sink(row):
        write_csv([row], args.csv, FIELDS)
        compile_s = "" if row["compile_s"] is None else f"  compile {row['compile_s']:.1f} s"
        print(
            f"[row] {row['preset']:14s} {row['objective']:5s} {row['mode']:8s} {row['tokens_per_s']:9.0f} tok/s  "
            f"step p50 {row['step_ms_p50']:7.1f} ms  x{row['ratio_vs_eager']:.2f}  loss0 {row['loss0']:.6f}{compile_s}",
            flush=True,
        )

    for preset, objective in RUNS:
        rows = measure(preset, objective, args.steps, args.warmup, env, sink)
        gap = abs(rows[1]["loss0"] - rows[0]["loss0"])
        print(f"{preset}: step-0 loss compiled vs eager differs by {gap:.2e}", flush=True)
    print(f"rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
