"""A small fine-tuning loop: AdamW, linear warm-up/decay, gradient clipping, evaluation each epoch,
best checkpoint kept. Written against plain callables so the trainer of ``ptft_fast.train`` can
replace it in ``ptft finetune`` later without touching the task code.

The ``evaluate`` callable scores a *validation* (dev) split: its scores choose the kept epoch, so it
must never see the test data the final number is reported on (``ptft finetune`` scores ``--eval``
once, on the kept model, after training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ptft_fast.finetune import ulmfit


@dataclass
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    grad_clip: float = 1.0  # max global grad norm (0: off)
    seed: int = 0
    progress: bool = True  # tqdm bar per epoch
    eval_every: int = 1  # evaluate every this many epochs (and after the last one)
    # ULMFiT (ptft_fast.finetune.ulmfit): per-layer lr decay (1 = one lr), "linear" warm-up/decay
    # or "stlr" (slanted triangular), gradual unfreezing (epoch e trains the top e layer groups)
    layer_lr_decay: float = 1.0
    schedule: str = "linear"
    stlr_cut_frac: float = 0.1
    stlr_ratio: float = 32.0
    gradual_unfreeze: bool = False


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "train_loss", **eval metrics}
    best: dict | None = None


def batches(data: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool, generator=None):
    """Slices of a dict of (N, ...) tensors; padding columns that are empty in a batch are cut."""
    n = next(iter(data.values())).shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        b = {k: v[idx] for k, v in data.items()}
        if "attention_mask" in b and b["input_ids"].shape == b["attention_mask"].shape:
            t = int(b["attention_mask"].sum(0).nonzero().max()) + 1
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                if k in b:
                    b[k] = b[k][:, :t]
            if (
                "labels" in b
                and b["labels"].dim() == 2
                and b["labels"].shape[1] == data["input_ids"].shape[1]
            ):
                b["labels"] = b["labels"][:, :t]
        yield b


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's own loss: a TaskModel returns a dict, a ptft_fast LM a ModelOutput."""
    out = model(**batch)
    return out["loss"] if isinstance(out, dict) else out.loss


def train(
    model: nn.Module,
    train_data: dict[str, torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    cfg: FinetuneConfig,
    *,
    metric: str,
    higher_is_better: bool = True,
    on_best: Callable[[nn.Module, dict], None] | None = None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    restore_best: bool = False,
) -> History:
    """Train the parameters that require grad; ``evaluate(model)`` (the validation split) after
    every ``cfg.eval_every``-th epoch and the last (``History.epochs`` holds the evaluated epochs);
    ``on_best`` is called (e.g. to save a checkpoint) whenever ``metric`` improves. With
    ``restore_best`` the model ends with the weights of the best epoch (a CPU copy of the trainable
    parameters is kept while training), ready to be scored on the test split."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: no trainable parameters")
    opt = torch.optim.AdamW(
        ulmfit.param_groups(model, params, cfg.lr, cfg.weight_decay, cfg.layer_lr_decay), lr=cfg.lr
    )
    n = next(iter(train_data.values())).shape[0]
    total = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        ulmfit.schedule(
            cfg.schedule,
            total,
            warmup_ratio=cfg.warmup_ratio,
            cut_frac=cfg.stlr_cut_frac,
            ratio=cfg.stlr_ratio,
        ),
    )
    unfreezing = ulmfit.GradualUnfreezing(model, params) if cfg.gradual_unfreeze else None
    loss_fn = loss_fn or default_loss
    hist = History()
    for epoch in range(1, cfg.epochs + 1):
        if unfreezing is not None:
            unfreezing.start_epoch(epoch)
        model.train()
        losses = []
        bar = tqdm(
            list(batches(train_data, cfg.batch_size, shuffle=True, generator=gen)),
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for b in bar:
            loss = loss_fn(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if unfreezing is not None:
                unfreezing.drop_frozen_grads()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if epoch % max(1, cfg.eval_every) and epoch != cfg.epochs:
            continue
        model.eval()
        with torch.no_grad():
            scores = evaluate(model)
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), **scores}
        hist.epochs.append(row)
        better = hist.best is None or (
            scores[metric] > hist.best[metric] if higher_is_better else scores[metric] < hist.best[metric]
        )
        if better:
            hist.best = row
            if restore_best:
                best_weights = [p.detach().to("cpu", copy=True) for p in params]
            if on_best is not None:
                on_best(model, row)
    if restore_best and hist.best is not None:
        with torch.no_grad():
            for p, w in zip(params, best_weights):
                p.copy_(w)
    return hist
