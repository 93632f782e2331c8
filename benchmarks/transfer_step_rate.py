"""Steps/s of pre-training configurations relative to the defaults, measured in one run.

For the sample-efficiency study of ``bench_transfer.py``: configurations are compared at a fixed
step count (load-independent), and this converts each to what a wall-clock budget buys. Each
configuration (``--config NAME:KEY=VALUE,KEY=VALUE``; ``threads=N`` sets the CPU intra-op
threads) runs ``--steps`` MLM steps of the transfer benchmark's pre-training (its corpus, the
library's Trainer) in turn with the defaults, ``--rounds`` times alternating, so that load on a
shared machine hits both alike; the rate is steps per second after the first ``--skip`` steps
(metrics rows, excluding start-up). Prints the ratio to the defaults per round and their median
and appends rows to ``--csv``.

Run: ``python -m ptft_fast.benchmarks.transfer_step_rate --config t2:threads=2 --config s64:seq_len=64,micro_batch_size=32``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from pathlib import Path

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv

FIELDS = ["config", "sets", "round", "steps", "steps_per_s", "ratio_to_default", "tokens_per_step",
          "device", "torch", "commit", "timestamp", "model", "data"]  # fmt: skip


def rate(out: Path, sets: dict, steps: int, skip: int, model: str, data: str | None) -> tuple[float, int]:
    """(steps/s after ``skip`` steps, tokens per step) of one short pre-training run of ``model`` on
    ``data`` (None: the transfer benchmark's corpus)."""
    from ptft_fast.benchmarks.bench_transfer import write_corpus
    from ptft_fast.train.config import TrainConfig, merge
    from ptft_fast.train.trainer import Trainer

    if data is None:
        data = str(out.parent / "corpus.jsonl")
        if not Path(data).exists():
            write_corpus(Path(data), set())
    sets = dict(sets)
    threads = int(sets.pop("threads", 0))
    cfg = TrainConfig(model=model, objective="mlm", data=data, out=str(out), max_steps=steps,
                      progress=False, plot=False, eval_every=0, save_every=0, log_every=1, cpu_threads=threads)  # fmt: skip
    cfg = merge(cfg, sets, "--config")
    Trainer(cfg).run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    a, b = rows[skip - 1], rows[-1]
    per_step = (b["tokens"] - a["tokens"]) / (b["step"] - a["step"])
    return (b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"]), round(per_step)


def parse(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition(":")
    return name, dict(kv.split("=", 1) for kv in body.split(",") if kv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="NAME:KEY=VALUE,... (threads=N too)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--skip", type=int, default=20, help="start-up steps not timed")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="bert-tiny", help="model preset (default: the transfer benchmark's)")
    p.add_argument(
        "--data", default=None, help="what ptft pretrain reads (e.g. a prepared shard folder); default: "
        "the transfer benchmark's corpus"
    )  # fmt: skip
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "ptft-step-rate"))
    p.add_argument("--csv", default=str(RESULTS_DIR / "transfer_step_rate_cpu.csv"))
    args = p.parse_args(argv)
    import torch

    env = environment(torch.device("cpu"))
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    configs = [("default", {}), *map(parse, args.config)]
    ratios: dict[str, list[float]] = {n: [] for n, _ in configs[1:]}
    for r in range(args.rounds):
        base = None
        for name, sets in configs:
            out = Path(args.out) / f"{name}-{r}"
            sps, tps = rate(out, sets, args.steps, args.skip, args.model, args.data)
            base = sps if name == "default" else base
            ratio = sps / base
            if name != "default":
                ratios[name].append(ratio)
            print(
                f"round {r} {name:12s} {sps:6.2f} steps/s  ratio {ratio:.3f}  {tps} tokens/step", flush=True
            )
            row = {"config": name, "sets": " ".join(f"{k}={v}" for k, v in sets.items()), "round": r,
                   "steps": args.steps, "steps_per_s": round(sps, 3), "ratio_to_default": round(ratio, 3),
                   "tokens_per_step": tps, "timestamp": stamp, "model": args.model,
                   "data": args.data or "transfer corpus", **env}  # fmt: skip
            if args.csv:
                write_csv([row], Path(args.csv), FIELDS)
    for name, rs in ratios.items():
        print(f"{name}: steps/s ratio to the defaults, median of {len(rs)}: {statistics.median(rs):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
