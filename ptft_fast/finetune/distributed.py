"""Fine-tuning on DeepSpeed ranks (``ptft finetune --zero-stage N`` / ``--deepspeed FILE``), launched
like pre-training (``torchrun``, ``deepspeed``, ``python -m ptft_fast.train.ds_launch``; one rank
without a launcher).

Every rank reads the same data and draws the same order; each step's batch is split into the
micro-batches of the accumulation and each micro-batch into one slice per rank. A slice's loss is
weighted by its share of the *whole* batch's label units and ``DeepSpeedStrategy.backward`` undoes
DeepSpeed's averaging over ranks, so the update equals single-process training on the batch.
Checkpoints are the engine's (``train.deepspeed_trainer.save_engine_checkpoint``) with the run state
as client state; dev evaluation runs on every rank, rank 0 logs and saves the kept model.
"""

from __future__ import annotations

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
    if int(opts.zero_stage or 0) == 3 or _json_stage(opts) == 3:
        from ptft_fast.train.config import TrainConfigError

        raise TrainConfigError(
            "fine-tuning runs on ZeRO stage 0, 1 or 2 (stage 3's partitioned parameters are not "
            "supported by the fine-tuning loop yet); use --zero-stage 2"
        )
    micro = max(1, math.ceil(tcfg.micro_batch_size / world))
    tcfg = dataclasses.replace(tcfg, micro_batch_size=micro)
    strategy = DeepSpeedStrategy(model, tcfg, build_config(opts, tcfg, world), groups=groups, lr_at=lr_at)
    strategy.rank = rank
    return strategy


def _json_stage(opts) -> int:
    import json

    if opts.config is None:
        return 0
    return int(json.loads(Path(opts.config).read_text()).get("zero_optimization", {}).get("stage", 0))


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
