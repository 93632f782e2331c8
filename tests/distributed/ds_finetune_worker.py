"""One rank of a fine-tuning job for the DeepSpeed fine-tuning tests: a tiny BERT classifier
(dropout off, so ranks and one process draw no random masks) through ``finetune.loop.train``.

``run``: rank 0 writes the final weights and the step losses to OUT (test_ds_finetune).
``saved_run``: the ``ptft finetune`` setup on a model folder (task head built by
``finetune.saved.build``, dev accuracy chooses the kept model, ``OUT/best`` written by
``finetune.saved.save``, the best weights restored at the end); any DeepSpeed JSON (ZeRO-3),
``--resume latest``, a per-micro-batch pause (``PTFT_TEST_STEP_SLEEP``) for kill tests, the last
step's weights instead of the best (``--last``).

As a script: ``ds_finetune_worker.py OUT STAGE`` (``run``) or
``ds_finetune_worker.py OUT [STAGE] --base FOLDER [--ds-json FILE] [--steps N] [--resume] [--last]``,
``ds_finetune_worker.py OUT STAGE --unfreeze``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ptft_fast.finetune.heads import TaskModel
from ptft_fast.finetune.loop import FinetuneConfig, default_loss, train
from ptft_fast.models import from_name

LABELS = ["a", "b", "c"]


def task_model():
    torch.manual_seed(0)
    backbone = from_name("bert-tiny-cpu", vocab_size=60, dropout=0.0, attention_dropout=0.0, pad_token_id=0)
    return TaskModel(backbone, "cls", 3, dropout=0.0)


def task_data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
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


def unfreeze_run(out: Path, stage: int | None, epochs: int = 4) -> None:
    """``--gradual-unfreeze`` over ``epochs`` epochs (2 steps each); rank 0 writes the weights
    after every epoch E to OUT/epoch_E.safetensors (the start is ``task_model()``'s)."""
    from ptft_fast.train.deepspeed_config import DeepSpeedOptions

    model = task_model()
    ds = DeepSpeedOptions(zero_stage=stage) if stage is not None else None
    cfg = FinetuneConfig(epochs=epochs, batch_size=8, grad_accum=2, lr=1e-2, weight_decay=0.1, progress=False,
                         gradual_unfreeze=True, deepspeed=ds)  # fmt: skip
    done = []

    def evaluate(m):
        weights = whole_weights(m)  # every rank (ZeRO-3 gathers)
        done.append(len(done) + 1)
        if _rank() == 0:
            save_file(weights, out / f"epoch_{len(done)}.safetensors")
        return {"acc": 0.0}

    train(model, task_data(), evaluate, cfg, metric="acc")


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def saved_model(base: Path):
    """(task model without dropout, spec, tokenizer, config) on the model folder ``base``."""
    from ptft_fast.finetune import saved
    from ptft_fast.finetune.session import load_model_dir

    backbone, config, tok = load_model_dir(str(base), dropout=0.0, attention_dropout=0.0)
    spec = saved.TaskSpec(task="cls", labels=LABELS, pooling="mean")
    torch.manual_seed(0)  # the head's initial weights
    model = saved.build(backbone, spec)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model, spec, tok, config


def saved_run(
    out: Path, base: Path, ds=None, steps: int = 4, resume: bool = False, restore_best: bool = True
) -> tuple[dict, list]:
    """Fine-tune like ``ptft finetune`` does; returns (final weights, whole tensors on every rank:
    the best evaluation's, or the last step's without ``restore_best``; the dev history).
    ``ds``: DeepSpeedOptions or None (one process)."""
    from ptft_fast.finetune import saved, tasks

    model, spec, tok, config = saved_model(base)
    dev = task_data(8, seed=2)
    cfg = FinetuneConfig(batch_size=8, grad_accum=2, max_steps=steps, eval_steps=2, lr=1e-2, progress=False,
                         out=str(out), deepspeed=ds, resume="latest" if resume else None)  # fmt: skip

    def on_best(m, row):
        saved.save(m, out / "best", spec, tok, config, base_model=str(base), dev_metrics=row)

    pause = float(os.environ.get("PTFT_TEST_STEP_SLEEP", "0"))

    def loss_fn(m, batch):
        time.sleep(pause)
        return default_loss(m, batch)

    # 17 rows: step 3 is a one-row batch, so rank 1's slice of it is empty (a zero-weighted forward)
    hist = train(model, task_data(17), lambda m: tasks.evaluate_cls(m, dev), cfg, metric="accuracy",
                 on_best=on_best, loss_fn=loss_fn, restore_best=restore_best)  # fmt: skip
    return whole_weights(model), hist.epochs


def whole_weights(model) -> dict:
    """``model``'s state dict as whole tensors (ZeRO-3's shards gathered: call on every rank)."""
    import contextlib

    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    with gather:
        return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main(argv: list[str]) -> None:
    from ptft_fast.train.deepspeed_config import DeepSpeedOptions

    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("stage", type=int, nargs="?")
    p.add_argument("--base", type=Path)
    p.add_argument("--ds-json")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--unfreeze", action="store_true")
    p.add_argument("--last", action="store_true", help="final weights of the last step (no restore_best)")
    a = p.parse_args(argv)
    history, weights = None, {}
    if a.unfreeze:
        a.out.mkdir(parents=True, exist_ok=True)
        unfreeze_run(a.out, a.stage)
    elif a.base is None:
        weights = run(a.out, a.stage)
    else:
        ds = DeepSpeedOptions(config=a.ds_json, zero_stage=a.stage if a.ds_json is None else None)
        weights, history = saved_run(a.out, a.base, ds, a.steps, a.resume, restore_best=not a.last)
    if torch.distributed.get_rank() == 0:
        save_file(weights, a.out / "final.safetensors")
        (a.out / "done.json").write_text(json.dumps({"ok": True, "history": history}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
