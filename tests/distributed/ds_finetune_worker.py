"""One rank of a fine-tuning job for test_ds_finetune: a tiny BERT classifier (dropout off, so
ranks and one process draw no random masks) through ``finetune.loop.train``; rank 0 writes the
final weights and the step losses to OUT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ptft_fast.finetune.heads import TaskModel
from ptft_fast.finetune.loop import FinetuneConfig, train
from ptft_fast.models import from_name


def task_model():
    torch.manual_seed(0)
    backbone = from_name("bert-tiny-cpu", vocab_size=60, dropout=0.0, attention_dropout=0.0, pad_token_id=0)
    return TaskModel(backbone, "cls", 3, dropout=0.0)


def task_data(n=16):
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(3, 10, (n,), generator=g)
    mask = (torch.arange(9)[None] < lens[:, None]).long()
    ids = torch.randint(5, 60, (n, 9), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}


def run(out: Path, stage: int | None) -> dict:
    from ptft_fast.train.deepspeed_config import DeepSpeedOptions

    model = task_model()
    ds = DeepSpeedOptions(zero_stage=stage) if stage is not None else None
    cfg = FinetuneConfig(batch_size=8, grad_accum=2, max_steps=4, eval_steps=2, lr=1e-2, progress=False,
                         out=str(out), deepspeed=ds)  # fmt: skip
    train(model, task_data(), lambda m: {"acc": 0.0}, cfg, metric="acc")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    out, stage = Path(sys.argv[1]), int(sys.argv[2])
    weights = run(out, stage)
    if torch.distributed.get_rank() == 0:
        save_file(weights, out / "final.safetensors")
        (out / "done.json").write_text(json.dumps({"ok": True}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
