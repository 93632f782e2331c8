"""One rank of the ZeRO-3 tests (run under ds_launch): ``ds_zero3_worker.py MODE OUT DS_JSON``.

MODE ``partial``: steps 1-2 of the 4-step BASE run, checkpoint, then rank 0 writes the gathered
fp32 parameters to OUT/gathered.safetensors (the oracle for export) and the job exits (the first
half of a save → resume test). ``unregistered``: one step with the external-parameter registration
switched off (must fail: the fused loss gets an empty shard of the tied embedding).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ds_testlib import BASE


def main(mode: str, out: str, ds_json: str) -> int:
    import deepspeed
    from safetensors.torch import save_file

    import ptft_fast.train.zero_utils as zu
    from ptft_fast.train.config import TrainConfig, merge
    from ptft_fast.train.deepspeed_config import DeepSpeedOptions
    from ptft_fast.train.deepspeed_trainer import DeepSpeedTrainer

    if mode == "unregistered":
        zu.register_external_parameters = lambda model: []
    cfg = merge(TrainConfig(), {**BASE, "out": out}, "test")
    trainer = DeepSpeedTrainer(cfg, DeepSpeedOptions(config=ds_json))
    for _ in range(1 if mode == "unregistered" else 2):
        out_step = trainer.train_step()
        trainer.log.write({"kind": "train", "step": trainer.step, "loss": out_step.loss})
    trainer.save()
    if mode == "partial":
        params = dict(trainer.model.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            if trainer.rank == 0:
                save_file(
                    {k: p.detach().clone() for k, p in params.items()}, Path(out) / "gathered.safetensors"
                )
    trainer.log.close()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
