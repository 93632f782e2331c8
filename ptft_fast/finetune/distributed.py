"""Fine-tuning on DeepSpeed ranks (``ptft finetune --zero-stage N`` / ``--deepspeed FILE``), launched
like pre-training (``torchrun``, ``deepspeed``, ``python -m ptft_fast.train.ds_launch``; one rank
without a launcher).

Every rank reads the same data and draws the same order; each step's batch is split into the
micro-batches of the accumulation and each micro-batch into one slice per rank. A slice's loss is
weighted by its share of the *whole* batch's label units and ``DeepSpeedStrategy.backward`` undoes
DeepSpeed's averaging over ranks, so the update equals single-process training on the batch.
Checkpoints are the engine's (``train.deepspeed_trainer.save_engine_checkpoint``) with the run state
as client state; dev evaluation runs on every rank, rank 0 logs and saves the kept model.

ZeRO stage 3 keeps each parameter as a 1/world shard that the engine's module hooks gather for a
forward, so evaluation (every rank runs it, on the same data) works as it is; what reads weights
outside a forward — the best evaluation's weight snapshot, saving the kept model, putting the best
weights back — runs inside :func:`full_parameters`, where every rank holds the whole tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

from ptft_fast.train import checkpoint as ckpt
from ptft_fast.train.config import TrainConfig


def deepspeed_strategy(model, tcfg: TrainConfig, opts, groups: list[dict], lr_at):
    """A DeepSpeedStrategy for ``model`` on the launched ranks (``.rank`` set)."""
    from ptft_fast.train.deepspeed_config import build_config
    from ptft_fast.train.deepspeed_strategy import DeepSpeedStrategy, init_distributed

    rank, world = init_distributed()
    micro = max(1, math.ceil(tcfg.micro_batch_size / world))
    tcfg = dataclasses.replace(tcfg, micro_batch_size=micro)
    strategy = DeepSpeedStrategy(model, tcfg, build_config(opts, tcfg, world), groups=groups, lr_at=lr_at)
    strategy.rank = rank
    return strategy


def full_parameters(strategy, params, *, modifier_rank: int | None = None):
    """Context in which ``params`` are whole tensors on every rank: ZeRO-3's shards gathered (a
    collective: every rank must enter it; with ``modifier_rank`` that rank's changes are kept), a
    no-op for every other strategy."""
    if getattr(strategy, "stage", 0) != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


def save_engine_run(cfg, out: Path, strategy, run, settings: dict) -> Path:
    from ptft_fast.train.deepspeed_trainer import save_engine_checkpoint

    client = {"finetune": run.to_json(), "config": settings, "best_weights": run.best_weights}
    return save_engine_checkpoint(
        strategy.engine, out / "checkpoints", run.step, client, strategy.rank, cfg.keep_last
    )


def load_engine_run(cfg, out: Path, strategy, run) -> tuple[dict, Path]:
    from ptft_fast.train.deepspeed_trainer import load_engine_checkpoint

    path = ckpt.resolve(cfg.resume, out)
    state = load_engine_checkpoint(strategy.engine, path, strategy.rank)
    run.best_weights = state.get("best_weights")
    return state, path
