"""The DeepSpeed options of ``ptft pretrain`` and the argument parsing of one launched rank::

    deepspeed --num_gpus 2 --module ptft_fast.train.deepspeed_run --zero-stage 3 --set max_steps=100
    torchrun --nproc-per-node 2 -m ptft_fast.train.deepspeed_run --deepspeed configs/ds_zero2.json

(``ptft_fast.train.deepspeed_run`` is the module path the launchers run; it hands its argv to
:func:`main` here.)
"""

from __future__ import annotations

import argparse
import sys

from ptft_fast.train.deepspeed_config import OFFLOAD_DEVICES, DeepSpeedOptions


def add_deepspeed_args(parser: argparse.ArgumentParser) -> None:
    """The DeepSpeed flags of ``ptft pretrain`` and of a launched rank."""
    g = parser.add_argument_group("DeepSpeed (launch with `deepspeed` or `torchrun`)")
    g.add_argument(
        "--deepspeed", metavar="DS_CONFIG.json", help="DeepSpeed config file, passed through (default: none)"
    )
    g.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1, 2, 3),
        help="generate a DeepSpeed ZeRO config at this stage (default: none, plain PyTorch training)",
    )
    g.add_argument(
        "--offload-optimizer",
        choices=OFFLOAD_DEVICES,
        help="ZeRO: keep optimizer states on this device (default: none, on the GPU)",
    )
    g.add_argument(
        "--offload-params",
        choices=OFFLOAD_DEVICES,
        help="ZeRO-3: keep parameters on this device (default: none, on the GPU)",
    )
    g.add_argument("--nvme-path", default="/local_nvme", help="swap folder for nvme offload")
    # The launchers pass --local_rank / --local-rank; LOCAL_RANK in the environment is what we read.
    g.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> DeepSpeedOptions:
    """The parsed DeepSpeed flags as checked :class:`DeepSpeedOptions`."""
    opts = DeepSpeedOptions(
        config=args.deepspeed,
        zero_stage=args.zero_stage,
        offload_optimizer=args.offload_optimizer,
        offload_params=args.offload_params,
        nvme_path=args.nvme_path,
    )
    opts.validate()
    return opts


def main(argv: list[str] | None = None) -> int:
    """One rank of a DeepSpeed pre-training job (settings as ``--set key=value``)."""
    import torch

    from ptft_fast.train.config import TrainConfig, merge, parse_sets
    from ptft_fast.train.deepspeed_run import make_trainer
    from ptft_fast.train.loop import format_summary

    parser = argparse.ArgumentParser(prog="python -m ptft_fast.train.deepspeed_run", description=main.__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig key")
    parser.add_argument("--resume", metavar="PATH|latest")
    add_deepspeed_args(parser)
    args = parser.parse_args(argv)
    cfg = merge(TrainConfig(), parse_sets(args.set), "--set")
    trainer = make_trainer(cfg, options_from_args(args), resume=args.resume)
    summary = trainer.run()
    if getattr(trainer, "rank", 0) == 0:
        print(format_summary(summary), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # without it gloo ranks can hang at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
