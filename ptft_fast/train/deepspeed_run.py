"""A run with or without DeepSpeed, and the module path the launchers start one rank with::

    deepspeed --num_gpus 2 --module ptft_fast.train.deepspeed_run --zero-stage 3 --set max_steps=100
    torchrun --nproc-per-node 2 -m ptft_fast.train.deepspeed_run --deepspeed configs/ds_zero2.json
    python -m ptft_fast.train.ds_launch --nproc 2 -- python -m ptft_fast.train.deepspeed_run --zero-stage 1

The options are parsed in ``ptft_fast.cli.deepspeed_run`` (argument parsing lives in the CLI layer).
"""

from __future__ import annotations

import sys

from ptft_fast.train.config import TrainConfig
from ptft_fast.train.deepspeed_config import DeepSpeedOptions


def make_trainer(cfg: TrainConfig, opts: DeepSpeedOptions, resume: str | None = None):
    """DeepSpeedTrainer when ``opts`` asks for DeepSpeed (``--deepspeed`` / ``--zero-stage``), else
    the single-process Trainer."""
    if not opts.enabled:
        from ptft_fast.train.trainer import Trainer

        return Trainer(cfg, resume=resume)
    from ptft_fast.train.deepspeed_trainer import DeepSpeedTrainer

    return DeepSpeedTrainer(cfg, opts, resume=resume)


if __name__ == "__main__":  # the launchers' entry point: parse this rank's argv in the CLI layer
    from ptft_fast.cli.deepspeed_run import main

    sys.exit(main())
