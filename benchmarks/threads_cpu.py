"""CPU pre-training tokens/s with 1 vs 2 intra-op threads: what ``cpu_threads=0`` (auto) picks.

One ``Trainer`` per preset (MLM, 128 tokens a row, ``--batch`` rows a step: default the run default, batches built on the
prefetch thread as ``ptft pretrain`` does) alternates blocks of ``--block`` steps between the
thread counts in ABBA order, so load from other processes hits both alike; the first step of
each block is not timed (the OpenMP pool resizes). Each row records the 1-minute load average
seen during its blocks (mean and max): on a machine shared with other jobs the answer can
depend on the load, and the rows say under which load they were measured.

Run: ``python -m ptft_fast.benchmarks.threads_cpu [--presets bert-tiny-cpu,bert-tiny]
[--steps 40] [--note TEXT]`` → table and ``benchmarks/results/threads_cpu.csv`` (rows appended).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv
from ptft_fast.utils.device import cpu_model

FIELDS = [
    "preset", "objective", "threads", "tokens_per_s", "step_ms_p20", "step_ms_p50", "step_ms_p80",
    "ratio_vs_1_thread", "load_mean", "load_max", "params", "steps", "shape", "prefetch", "cores",
    "cpu_model", "device", "torch", "commit", "timestamp", "note",
]  # fmt: skip


def _trainer(preset: str, objective: str, out: Path, batch: int):
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.trainer import Trainer

    cfg = TrainConfig(
        model=preset, objective=objective, out=str(out), seq_len=128, micro_batch_size=batch,
        max_steps=100_000, progress=False, plot=False,
    )  # fmt: skip
    return Trainer(cfg)


def measure(
    preset: str,
    objective: str,
    steps: int,
    block: int,
    counts: list[int],
    env: dict,
    note: str,
    batch: int = 16,
):
    """Rows (one per thread count) for ``steps`` timed steps each."""
    out = Path(tempfile.mkdtemp()) / "run"
    trainer = _trainer(preset, objective, out, batch)
    params = sum(p.numel() for p in trainer.model.parameters())
    times: dict[int, list[float]] = {n: [] for n in counts}
    tokens: dict[int, int] = dict.fromkeys(counts, 0)
    loads: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(2):  # warm-up: first batches, allocator, both pool sizes
        for n in counts:
            torch.set_num_threads(n)
            trainer.train_step()
    r = 0
    while min(len(t) for t in times.values()) < steps:
        for n in counts[:: 1 if r % 2 == 0 else -1]:
            torch.set_num_threads(n)
            trainer.train_step()  # untimed: the pool resizes
            for _ in range(block):
                start = time.perf_counter()
                res = trainer.train_step()
                times[n].append(time.perf_counter() - start)
                tokens[n] += res.tokens
            loads[n].append(os.getloadavg()[0])
        r += 1
    if hasattr(trainer.source, "close"):
        trainer.source.close()
    shutil.rmtree(out.parent, ignore_errors=True)
    rows = []
    for n in counts:
        q = statistics.quantiles(times[n], n=10, method="inclusive")
        rows.append(
            dict(
                preset=preset,
                objective=objective,
                threads=n,
                tokens_per_s=tokens[n] / sum(times[n]),
                step_ms_p20=q[1] * 1e3,
                step_ms_p50=statistics.median(times[n]) * 1e3,
                step_ms_p80=q[7] * 1e3,
                load_mean=statistics.mean(loads[n]),
                load_max=max(loads[n]),
                params=params,
                steps=len(times[n]),
                shape=f"B={batch} T=128",
                prefetch=trainer.cfg.prefetch,
                cores=os.cpu_count(),
                cpu_model=cpu_model(),
                note=note,
                **env,
            )
        )
    for row in rows:
        row["ratio_vs_1_thread"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    from ptft_fast.train.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="bert-tiny-cpu,bert-tiny", help="comma-separated MLM presets")
    parser.add_argument(
        "--threads", default="1,2", help="thread counts to compare; the first is the baseline"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=TrainConfig().micro_batch_size,
        help="rows a step (default: ptft's default)",
    )
    parser.add_argument("--steps", type=int, default=40, help="timed steps per thread count (>= 2)")
    parser.add_argument("--block", type=int, default=5, help="timed steps per block (>= 1)")
    parser.add_argument("--note", default="", help="free text stored on every row (e.g. the machine's load)")
    parser.add_argument("--csv", default=str(RESULTS_DIR / "threads_cpu.csv"), help="CSV to append rows to")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.block < 1:
        parser.error("--steps must be >= 2 and --block >= 1")
    counts = [int(x) for x in args.threads.split(",")]
    env = environment(torch.device("cpu"))
    for key in ("triton", "cuda", "transformers", "peft"):
        env.pop(key)
    for preset in args.presets.split(","):
        for row in measure(preset, "mlm", args.steps, args.block, counts, env, args.note, args.batch):
            write_csv([row], args.csv, FIELDS)
            print(
                f"[row] {row['preset']:14s} {row['threads']} thread(s) {row['tokens_per_s']:8.0f} tok/s  "
                f"step p50 {row['step_ms_p50']:7.1f} ms  x{row['ratio_vs_1_thread']:.2f}  "
                f"load {row['load_mean']:.1f} (max {row['load_max']:.1f})",
                flush=True,
            )
    print(f"rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
