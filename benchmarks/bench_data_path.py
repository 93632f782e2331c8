"""Does the pre-training data path keep up with the model? (issue 24's benchmark)

For the tiny and base presets and every objective, on a corpus of many short documents (default
110,000 documents of 6-30 words cut from the standard library's docstrings and pydoc topics — the
shape where a per-document cost shows; ~3 documents per 64-token row), one :class:`Trainer` per
(preset, objective) alternates the two modes step by step, so that load from other jobs hits both:

- ``model_ms``: ``Trainer.train_step`` on batches built beforehand (the model alone: forward,
  backward, AdamW) → ``model_tokens_per_s``;
- ``step_ms``: ``Trainer.train_step`` as ``ptft pretrain`` runs it, batches built ahead on the
  prefetch thread (``prefetch`` = 2) → ``e2e_tokens_per_s``, ``e2e_vs_model`` = their ratio;
- ``data_wait_ms``: the part of ``step_ms`` the training thread spends getting its batch (queue
  wait + device copy); ``wait_share`` = data_wait_ms / step_ms;
- ``data_build_ms``: ``BatchSource.next`` alone in one thread (what the prefetch thread does).

Step times are medians over ``--steps`` steps per mode. Targets (CPU, measured in one run): wait
share ≤ 5 %, end-to-end ≥ 0.9× model-only. Rows go to ``benchmarks/results/data_path_cpu.csv``
(``_cuda`` on a GPU) with device, CPU model, threads, versions, commit and timestamp.

Run: ``python -m ptft_fast.benchmarks.bench_data_path [--sizes tiny,base] [--objectives mlm,clm]
[--steps 20] [--docs 110000] [--note TEXT]``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv
from ptft_fast.utils.device import cpu_model

# (preset, micro-batch, sequence length) per objective and size
PRESETS = {
    "tiny": {"mlm": "bert-tiny", "electra": "bert-tiny", "clm": "gpt-tiny", "prefix-lm": "gpt-tiny",
             "span": "t5-tiny", "infill": "bart-tiny"},
    "base": {"mlm": "bert-base", "electra": "bert-base", "clm": "gpt2", "prefix-lm": "gpt2",
             "span": "t5-base", "infill": "bart-base"},
}  # fmt: skip
SHAPES = {"tiny": (64, 64), "base": (8, 128)}
FIELDS = ["size", "preset", "objective", "batch", "seq_len", "threads", "data_build_ms", "data_wait_ms",
          "model_ms", "step_ms", "wait_share", "model_tokens_per_s", "e2e_tokens_per_s", "e2e_vs_model",
          "corpus_docs", "steps", "note", "device", "cpu_model", "torch", "numpy", "python", "commit",
          "timestamp"]  # fmt: skip


@functools.cache
def _words() -> tuple[str, ...]:
    """The words of the stdlib's docstrings and the pydoc topics, in a fixed order."""
    from pydoc_data.topics import topics

    from ptft_fast.data.stdlib_docstrings import _docstrings, stdlib_files

    words: list[str] = []
    for path in stdlib_files():
        with contextlib.suppress(SyntaxError, ValueError):
            for doc in _docstrings(ast.parse(path.read_bytes())):
                words += doc.split()
    for text in topics.values():
        words += text.split()
    return tuple(words)


def short_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` short documents (6-30 words) cut from stdlib docstrings and pydoc topics: windows
    starting every len(words)/n words, so documents overlap when n is large (deterministic)."""
    words, rng = _words(), random.Random(seed)
    stride = max(1, len(words) // n)
    return [" ".join(words[i : i + rng.randint(6, 30)]) for i in range(0, stride * n, stride)][:n]


def shard_folder(kind: str, docs: int, vocab: int, cache: Path) -> Path:
    """Train shards of the short-document corpus for tokenizer ``kind`` (built once, cached)."""
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.data import prepare_run_data

    root = cache / f"{kind}-{docs}-{vocab}"
    if not (root / "data" / "train" / "index.json").is_file():
        corpus = cache / f"short-{docs}.jsonl"
        if not corpus.is_file():
            corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in short_documents(docs)))
        prepare_run_data(TrainConfig(data=str(corpus), vocab_size=vocab), kind, root)
    return root / "data" / "train"


class Replay:
    """A batch source that hands out batches built beforehand, in a cycle (the model-only mode)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches, self.i = batches, 0

    def next(self, batch_size: int, seq_len: int) -> dict:
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]


def _median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def measure(size: str, objective: str, steps: int, docs: int, cache: Path) -> dict:
    """One row: model-only and end-to-end trainer steps in alternating rounds, data build time."""
    from ptft_fast.train.build import tokenizer_kind
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.data import BatchSource
    from ptft_fast.train.trainer import Trainer

    preset = PRESETS[size][objective]
    batch, seq_len = SHAPES[size]
    base = TrainConfig(model=preset, objective=objective, micro_batch_size=batch, seq_len=seq_len)
    shards = shard_folder(tokenizer_kind(base), docs, 8000, cache)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a shard folder: evaluation uses training documents"
        cfg = TrainConfig(**{**base.to_dict(), "data": str(shards), "out": out, "progress": False,
                             "plot": False, "max_steps": 10**6})  # fmt: skip
        trainer = Trainer(cfg)
    ahead = trainer.source
    plain = BatchSource(objective, trainer.data.train, trainer.tok, cfg, seed=cfg.seed + 1)
    build = []
    for _ in range(steps):
        t0 = time.perf_counter()
        plain.next(batch, seq_len)
        build.append(time.perf_counter() - t0)
    replay = Replay([plain.next(batch, seq_len) for _ in range(4)])
    times: dict[str, list[float]] = {"model": [], "e2e": [], "wait": []}
    tokens: dict[str, list[int]] = {"model": [], "e2e": []}
    for i in range(steps + 2):  # the modes alternate step by step; the first two steps warm up
        for mode, source in (("model", replay), ("e2e", ahead)):
            trainer.source = source
            t0 = time.perf_counter()
            out_step = trainer.train_step()
            dt = time.perf_counter() - t0
            if i >= 2:
                times[mode].append(dt)
                tokens[mode].append(out_step.tokens)
                if mode == "e2e":
                    times["wait"].append(out_step.data_s)
    ahead.close()
    model_s, step_s = statistics.median(times["model"]), statistics.median(times["e2e"])
    mean_wait = statistics.fmean(times["wait"])
    return {
        "size": size, "preset": preset, "objective": objective, "batch": batch, "seq_len": seq_len,
        "threads": trainer.cpu_threads, "data_build_ms": _median_ms(build),
        "data_wait_ms": 1e3 * mean_wait, "model_ms": 1e3 * model_s, "step_ms": 1e3 * step_s,
        "wait_share": mean_wait / statistics.fmean(times["e2e"]),
        "model_tokens_per_s": statistics.fmean(tokens["model"]) / model_s,
        "e2e_tokens_per_s": statistics.fmean(tokens["e2e"]) / step_s,
        "e2e_vs_model": (statistics.fmean(tokens["e2e"]) / step_s) / (statistics.fmean(tokens["model"]) / model_s),
        "corpus_docs": trainer.data.train.num_docs, "steps": len(times["e2e"]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,base", help="comma-separated: tiny, base")
    p.add_argument("--objectives", default="mlm,electra,clm,prefix-lm,span,infill")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (model-only, end-to-end)")
    p.add_argument("--docs", type=int, default=110_000, help="short documents in the corpus")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ptft-bench-data-path"))
    p.add_argument("--csv", default=None, help="default benchmarks/results/data_path_<cpu|cuda>.csv")
    p.add_argument("--note", default="", help="free text stored on every row (e.g. 'shared machine')")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {**environment(device), "cpu_model": cpu_model(), "numpy": np.__version__,
           "python": platform.python_version(), "note": args.note}  # fmt: skip
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = Path(args.csv or RESULTS_DIR / f"data_path_{device.type}.csv")
    print(f"{'preset':10s} {'objective':9s} thr  build ms  wait ms  model ms  step ms  wait %  e2e/model")
    for size in args.sizes.split(","):
        for objective in args.objectives.split(","):
            row = {**measure(size, objective, args.steps, args.docs, cache), **env}
            write_csv([row], path, FIELDS)  # each row as soon as it is measured
            print(f"{row['preset']:10s} {objective:9s} {row['threads']:3d} {row['data_build_ms']:9.2f} "
                  f"{row['data_wait_ms']:8.2f} {row['model_ms']:9.1f} {row['step_ms']:8.1f} "
                  f"{100 * row['wait_share']:6.2f} {row['e2e_vs_model']:9.3f}", flush=True)  # fmt: skip
    print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
