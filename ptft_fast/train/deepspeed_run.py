"""Entry points tying the CLI to DeepSpeed: ``strategy_from_args`` / ``trainer_from_args`` for
``ptft pretrain`` / ``ptft finetune``, and a per-rank worker for launchers::

    deepspeed --num_gpus 2 -m ptft_fast.train.deepspeed_run --zero-stage 3 --set max_steps=100
    torchrun --nproc-per-node 2 -m ptft_fast.train.deepspeed_run --deepspeed configs/ds_zero2.json
    python -m ptft_fast.train.ds_launch --nproc 2 -- python -m ptft_fast.train.deepspeed_run --zero-stage 1
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from ptft_fast.train.config import TrainConfig
from ptft_fast.train.deepspeed_config import add_deepspeed_args, build_config, options_from_args


def strategy_from_args(args: argparse.Namespace, model: nn.Module, cfg: TrainConfig, world_size: int):
    """A DeepSpeedStrategy when ``--deepspeed`` / ``--zero-stage`` was given, else None (use
    TorchStrategy). The process group must be up (``deepspeed_strategy.init_distributed``)."""
    opts = options_from_args(args)
    if not opts.enabled:
        return None
    from ptft_fast.train.deepspeed_strategy import DeepSpeedStrategy

    return DeepSpeedStrategy(model, cfg, build_config(opts, cfg, world_size))


def trainer_from_args(args: argparse.Namespace, cfg: TrainConfig, resume: str | None = None):
    """DeepSpeedTrainer when DeepSpeed was asked for, else the single-process Trainer."""
    opts = options_from_args(args)
    if not opts.enabled:
        from ptft_fast.train.trainer import Trainer

        return Trainer(cfg, resume=resume)
    from ptft_fast.train.deepspeed_trainer import DeepSpeedTrainer

    return DeepSpeedTrainer(cfg, opts, resume=resume)


def main(argv: list[str] | None = None) -> int:
    """One rank of a DeepSpeed pre-training job (settings as ``--set key=value``)."""
    from ptft_fast.train.config import merge, parse_sets

    parser = argparse.ArgumentParser(prog="python -m ptft_fast.train.deepspeed_run", description=main.__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig key")
    parser.add_argument("--resume", metavar="PATH|latest")
    add_deepspeed_args(parser)
    args = parser.parse_args(argv)
    cfg = merge(TrainConfig(), parse_sets(args.set), "--set")
    trainer = trainer_from_args(args, cfg, resume=args.resume)
    summary = trainer.run()
    if getattr(trainer, "rank", 0) == 0:
        from ptft_fast.train.loop import format_summary

        print(format_summary(summary), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # without it gloo ranks can hang at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
