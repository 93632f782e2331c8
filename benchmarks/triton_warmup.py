"""Triton warm-up for a GPU lease: one training step of each end-to-end workload's ptft model with
the triton backend, before ``bench_train_e2e`` times it.

Every kernel is then compiled at the benchmark's shapes and dtype (Triton's on-disk cache, shared
by later processes) and, with ``TRITON_CACHE_AUTOTUNING=1``, autotuned with the result cached on
disk too, so the timed ptft:triton provider starts warm. ``benchmarks/run_gpu.sh`` starts it in the
background at the beginning of a lease, beside the CUDA C++ build. The models are built from their
configs (random weights): the shapes, not the values, decide what compiles.

Run: ``python -m ptft_fast.benchmarks.triton_warmup [--only bert_mlm@128,gpt2_clm] [--tiny]``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from ptft_fast.benchmarks.bench_train_e2e import FULL, TINY, Workload, selected
from ptft_fast.benchmarks.train_common import clm_batch, mlm_batch


def warm(w: Workload, device: torch.device) -> float:
    """Seconds for building ``w``'s ptft model and running one forward + backward on triton."""
    from ptft_fast.models import build_model
    from ptft_fast.models.config import ModelConfig
    from ptft_fast.ops import use_backend

    start = time.perf_counter()
    no_drop = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    cfg = ModelConfig.from_name(w.preset, **no_drop, **w.overrides)
    if cfg.arch not in ("bert", "gpt2"):
        raise ValueError(f"warm-up covers the bert_mlm and gpt2_clm workloads, got {w.op}")
    b = w.batch[device.type]
    batch = mlm_batch(cfg.vocab_size, b, w.seq) if cfg.arch == "bert" else clm_batch(cfg.vocab_size, b, w.seq)
    model = build_model(cfg).to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    with contextlib.ExitStack() as ctx:
        ctx.enter_context(use_backend("triton"))
        if device.type == "cuda":
            ctx.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        loss = model(**batch).loss
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=None,
        help="workloads (bench_train_e2e --only); default bert_mlm@128,gpt2_clm (--tiny: both ops)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the rehearsal's shapes (CPU, Triton interpreter)"
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    only = (args.only or ("bert_mlm,gpt2_clm" if args.tiny else "bert_mlm@128,gpt2_clm")).split(",")
    for w in TINY if args.tiny else FULL:
        if selected(w, only):
            print(
                f"[warm-up] {w.op}@{w.seq} {w.preset} B={w.batch[device.type]}: {warm(w, device):.1f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
