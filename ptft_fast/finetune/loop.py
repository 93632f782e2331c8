"""The fine-tuning loop, on the pre-training loop's machinery (``ptft_fast.train``): the update is a
:class:`~ptft_fast.train.strategy.TorchStrategy` (AdamW, bf16/fp16 autocast with fp16 loss scaling,
gradient clipping) or a DeepSpeed engine, the NaN/inf policy is ``train.strategy.check_step``,
checkpoints are ``train.checkpoint``'s (atomic, with manifests; ``resume`` continues exactly after a
kill -9) and the metrics go through ``train.metrics.MetricsLog`` (JSONL/CSV, ``--report-to``).

What is fine-tuning's own: epochs over a labeled set (batches of examples in a seeded order),
evaluation on a *validation* (dev) split every ``eval_every`` epochs or ``eval_steps`` steps, early
stopping on the task metric, the best evaluation kept (``on_best``, ``restore_best``), and ULMFiT's
layer-wise rates, schedules and gradual unfreezing (``ptft_fast.finetune.ulmfit``).

The ``evaluate`` callable scores the dev split: its scores choose the kept model, so it must never
see the test data the final number is reported on (``ptft finetune`` scores ``--eval`` once, on the
kept model, after training)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ptft_fast.finetune import ulmfit
from ptft_fast.finetune.checkpoints import RunState, load_run, save_run
from ptft_fast.finetune.distributed import full_parameters
from ptft_fast.models.heads import IGNORE_INDEX
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.metrics import MetricsLog
from ptft_fast.train.strategy import TorchStrategy, check_step

# metrics.csv columns of a fine-tuning run (metrics.jsonl has every dev metric)
COLUMNS = ("kind", "step", "epoch", "loss", "lr", "grad_norm", "loss_scale", "elapsed_s", "metric", "value")


@dataclass
class FinetuneConfig:
    epochs: int = 3
    batch_size: int = 16  # examples per optimizer step
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    grad_clip: float = 1.0  # max global grad norm (0: off)
    seed: int = 0
    progress: bool = True  # tqdm bar
    eval_every: int = 1  # evaluate every this many epochs (and after the last one)
    # ULMFiT (ptft_fast.finetune.ulmfit): per-layer lr decay (1 = one lr), "linear" warm-up/decay
    # or "stlr" (slanted triangular), gradual unfreezing (epoch e trains the top e layer groups)
    layer_lr_decay: float = 1.0
    schedule: str = "linear"
    stlr_cut_frac: float = 0.1
    stlr_ratio: float = 32.0
    gradual_unfreeze: bool = False
    # the pre-training loop's machinery
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + dynamic loss scaling)
    grad_accum: int = 1  # micro-batches each step's batch is split into (same update, less memory)
    max_steps: int = 0  # > 0: train this many optimizer steps (epochs as many as that takes)
    eval_steps: int = 0  # > 0: evaluate every this many steps (and at the end) instead of by epoch
    patience: int = 0  # > 0: stop after this many evaluations without a better dev score
    gradient_checkpointing: bool = False  # recompute the layers in backward
    out: str | None = None  # run folder: checkpoints/ (at every evaluation), metrics.jsonl/.csv
    resume: str | None = None  # "latest" or a checkpoint folder: continue that run exactly
    keep_last: int = 2  # checkpoints kept
    report_to: str = "none"  # also to tensorboard | wandb | mlflow
    max_bad_steps: int = 5  # non-finite steps in a row before the run stops
    deepspeed: object | None = None  # train.deepspeed_config.DeepSpeedOptions (enabled): ZeRO ranks

    def train_config(self) -> TrainConfig:
        """The TrainConfig the shared machinery reads (optimizer, precision, clipping, NaN policy).
        AdamW keeps torch's defaults (betas 0.9/0.999, eps 1e-8), the usual fine-tuning choice."""
        return TrainConfig(
            lr=self.lr,
            weight_decay=self.weight_decay,
            beta2=0.999,
            adam_eps=1e-8,
            max_grad_norm=self.grad_clip,
            precision=self.precision,
            grad_accum_steps=self.grad_accum,
            max_bad_steps=self.max_bad_steps,
            keep_last=self.keep_last,
            seed=self.seed,
            report_to=self.report_to,
            progress=self.progress,
            micro_batch_size=max(1, math.ceil(self.batch_size / self.grad_accum)),
        )


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "step", "train_loss", **eval metrics}
    best: dict | None = None
    stopped_early: bool = False  # early stopping ended the run before its last step


def take(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of a dict of (N, ...) tensors; padding columns empty in all of them are cut."""
    b = {k: v[idx] for k, v in data.items()}
    if "attention_mask" in b and b["input_ids"].shape == b["attention_mask"].shape:
        t = int(b["attention_mask"].sum(0).nonzero().max()) + 1
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            if k in b:
                b[k] = b[k][:, :t]
        if "labels" in b and b["labels"].dim() == 2 and b["labels"].shape[1] == data["input_ids"].shape[1]:
            b["labels"] = b["labels"][:, :t]
    return b


def rows(data: dict[str, torch.Tensor]) -> int:
    return next(iter(data.values())).shape[0]


def batches(data: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool, generator=None):
    """Slices of a dict of (N, ...) tensors (see :func:`take`)."""
    n = rows(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield take(data, order[i : i + batch_size])


def default_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's own loss: a TaskModel returns a dict, a ptft_fast LM a ModelOutput."""
    out = model(**batch)
    return out["loss"] if isinstance(out, dict) else out.loss


def label_units(batch: dict) -> int:
    """What a batch's mean loss averages over: examples (one label per row: classes, scores, QA
    spans) or labeled tokens (tagging, seq2seq, instruct). Micro-batch losses are weighted by their
    share of the step's units, so accumulation gives the gradient of the whole batch."""
    labels = batch["labels"]
    if labels.dim() == 1 or labels.dtype.is_floating_point:
        return labels.shape[0]
    return int((labels != IGNORE_INDEX).sum())


def _set_checkpointing(model: nn.Module, on: bool) -> list:
    """Turn gradient checkpointing on in every ptft model config inside ``model``; returns the
    configs with their previous values (to put back)."""
    seen = []
    for m in model.modules():
        c = getattr(m, "config", None)
        if hasattr(c, "gradient_checkpointing") and all(c is not s for s, _ in seen):
            seen.append((c, c.gradient_checkpointing))
            c.gradient_checkpointing = on
    return seen


def _strategy(model: nn.Module, params, cfg: FinetuneConfig, total: int):
    """The shared machinery's update for these parameters: ULMFiT's groups (``lr_scale`` per layer
    group) and schedule as the strategy's ``lr_at``; DeepSpeed when ``cfg.deepspeed`` asks."""
    tcfg = cfg.train_config()
    groups = [
        dict(g, lr_scale=g["lr"] / cfg.lr)
        for g in ulmfit.param_groups(
            model, params, cfg.lr, cfg.weight_decay, cfg.layer_lr_decay, per_layer=cfg.gradual_unfreeze
        )
    ]
    mult = ulmfit.schedule(
        cfg.schedule, total, warmup_ratio=cfg.warmup_ratio, cut_frac=cfg.stlr_cut_frac, ratio=cfg.stlr_ratio
    )

    def lr_at(step: int, elapsed_s: float) -> float:
        return cfg.lr * mult(step)

    if cfg.deepspeed is not None:
        from ptft_fast.finetune.distributed import deepspeed_strategy

        return deepspeed_strategy(model, tcfg, cfg.deepspeed, groups, lr_at)
    device = next(model.parameters()).device
    return TorchStrategy(model, tcfg, device, groups=groups, lr_at=lr_at)


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
    units: Callable[[dict], int] = label_units,
) -> History:
    """Train the parameters that require grad; ``evaluate(model)`` (the validation split) every
    ``cfg.eval_every`` epochs (or ``cfg.eval_steps`` steps) and at the end (``History.epochs``
    holds the evaluations); ``on_best`` is called (e.g. to save the model) whenever ``metric``
    improves. With ``restore_best`` the model ends with the weights of the best evaluation, ready
    to be scored on the test split. ``units(batch)``: what the batch's loss is a mean over."""
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: no trainable parameters")
    n = rows(train_data)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * per_epoch
    strategy = _strategy(model, params, cfg, total)
    on_engine = _on_deepspeed(strategy)
    forward = strategy.engine if on_engine else model  # DeepSpeed: the engine runs the model
    rank, world = getattr(strategy, "rank", 0), getattr(strategy, "world_size", 1)
    run = RunState(gen=torch.Generator().manual_seed(cfg.seed))
    out = Path(cfg.out) if cfg.out else None
    resumed = cfg.resume is not None
    if resumed:
        if out is None:
            raise ValueError("train: resume needs cfg.out (the run folder holding the checkpoints)")
        load_run(cfg, out, model, strategy, params, run)
    saved_flags = _set_checkpointing(model, True) if cfg.gradient_checkpointing else []
    unfreezing = None
    if cfg.gradual_unfreeze:  # frozen groups: lr 0 (+ their gradients dropped unless DeepSpeed's)
        unfreezing = ulmfit.GradualUnfreezing(model, params, strategy.optimizer)
    log = None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(
            out,
            keep_until=run.step if resumed else None,
            columns=COLUMNS,
            report_to=cfg.report_to,
            run_name=out.name,
        )
    loss_fn = loss_fn or default_loss
    bar = tqdm(total=total, initial=run.step, disable=not cfg.progress or rank != 0, leave=False)
    t0, elapsed0 = time.perf_counter(), run.elapsed
    order = None
    try:
        while run.step < total and not run.stopped_early:
            if order is None or run.pos == 0:
                order = run.epoch_order(n)
                if unfreezing is not None:
                    unfreezing.start_epoch(run.epoch)
                bar.set_description(f"epoch {run.epoch}")
            idx = order[run.pos * cfg.batch_size : (run.pos + 1) * cfg.batch_size]
            model.train()
            loss = _step(forward, strategy, train_data, idx, cfg.grad_accum, loss_fn, units, rank, world)
            if unfreezing is not None and not on_engine:  # DeepSpeed owns the gradients
                unfreezing.drop_frozen_grads()
            result = strategy.step(run.step, run.elapsed)
            run.bad = check_step(run.bad, run.step + 1, [loss], result, cfg.train_config(), _ckpt_dir(out))
            run.step, run.pos = run.step + 1, run.pos + 1
            run.elapsed = elapsed0 + time.perf_counter() - t0
            if math.isfinite(loss):
                run.loss_sum, run.loss_n = run.loss_sum + loss, run.loss_n + 1
            if log is not None:
                log.write(
                    {"kind": "train", "step": run.step, "epoch": run.epoch, "loss": loss, "lr": result.lr,
                     "grad_norm": result.grad_norm, "loss_scale": result.loss_scale, "elapsed_s": run.elapsed}
                )  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            end_of_epoch = run.pos == per_epoch
            due = (
                cfg.eval_steps > 0 and run.step % cfg.eval_steps == 0
                if cfg.eval_steps
                else end_of_epoch and run.epoch % max(1, cfg.eval_every) == 0
            )
            if due or run.step == total:
                _evaluate(
                    model,
                    evaluate,
                    cfg,
                    run,
                    metric,
                    higher_is_better,
                    on_best,
                    restore_best,
                    params,
                    log,
                    strategy,
                )
            if end_of_epoch:
                run.epoch, run.pos = run.epoch + 1, 0
            if (due or run.step == total) and out is not None:
                save_run(cfg, out, model, strategy, params, run)
    finally:
        bar.close()
        if log is not None:
            log.close()
        for c, value in saved_flags:
            c.gradient_checkpointing = value
    if restore_best and run.best_weights is not None:
        with torch.no_grad(), full_parameters(strategy, params, modifier_rank=0):
            for p, w in zip(params, run.best_weights):
                p.copy_(w)
    return History(run.history, run.best, run.stopped_early)


def _ckpt_dir(out: Path | None) -> str:
    return str(out / "checkpoints") if out is not None else "(no run folder: no checkpoints)"


def _step(model, strategy, data, idx, accum, loss_fn, units, rank: int, world: int) -> float:
    """Forward and backward of one batch (rows ``idx``) in ``accum`` micro-batches, each loss
    weighted by its share of the batch's label units; with ``world`` ranks each rank takes its
    slice of every micro-batch (the weights still refer to the whole batch). Returns the batch's
    mean loss (over all ranks)."""
    micro = [m for m in torch.tensor_split(idx, min(accum, len(idx))) if len(m)]
    micro += [idx[:0]] * (accum - len(micro))  # fewer rows than micro-batches: empty ones
    total = max(units(take(data, idx)), 1)
    summed = torch.zeros((), dtype=torch.float64)
    for m in micro:
        local = torch.tensor_split(m, world)[rank] if world > 1 else m
        if len(local) == 0 or units(take(data, local)) == 0:
            strategy.backward(_zero_loss(model, strategy, data, idx, loss_fn, units))
            continue
        b = take(data, local)
        share = units(b) / total
        with strategy.autocast():
            loss = loss_fn(model, b)
        strategy.backward(loss * share)
        summed += float(loss.detach()) * share
    if world > 1:
        torch.distributed.all_reduce(summed)
    return float(summed)


def _on_deepspeed(strategy) -> bool:
    """The strategy runs a DeepSpeed engine (which owns the gradients and counts micro-batches)."""
    return getattr(strategy, "engine", None) is not None


def _zero_loss(model, strategy, data, idx, loss_fn, units) -> torch.Tensor:
    """The loss of a rank whose slice of a micro-batch has nothing to learn from (DeepSpeed counts
    every micro-batch). On DeepSpeed it is a forward of one labeled row of the step's batch (rows
    ``idx``) times 0: the other ranks' forwards give gradients to the same parameters in the same
    order, which ZeRO's bucketed reductions (and ZeRO-3's gathering hooks) need to stay in step."""
    if not _on_deepspeed(strategy):
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
    row = next((i for i in idx.tolist() if units(take(data, torch.tensor([i]))) > 0), int(idx[0]))
    return loss_fn(model, take(data, torch.tensor([row]))) * 0.0


def _evaluate(
    model, evaluate, cfg, run, metric, higher, on_best, restore_best, params, log, strategy
) -> None:
    """Score the dev split (on every rank); record the row, keep the best (ZeRO-3: gathered on
    every rank, written by rank 0), count evaluations without progress."""
    model.eval()
    with torch.no_grad():
        scores = evaluate(model)
    if metric not in scores:
        raise KeyError(f"train: metric {metric!r} not among the dev scores {sorted(scores)}")
    train_loss = run.loss_sum / run.loss_n if run.loss_n else float("nan")
    row = {"epoch": run.epoch, "step": run.step, "train_loss": train_loss, **scores}
    run.loss_sum, run.loss_n = 0.0, 0
    run.history.append(row)
    better = run.best is None or (
        scores[metric] > run.best[metric] if higher else scores[metric] < run.best[metric]
    )
    if log is not None:
        log.write({"kind": "dev", **row, "metric": metric, "value": scores[metric]})
    if better:
        run.best, run.since_best = row, 0
        with full_parameters(strategy, model.parameters()):
            if restore_best:
                run.best_weights = [p.detach().to("cpu", copy=True) for p in params]
            if on_best is not None and getattr(strategy, "rank", 0) == 0:
                on_best(model, row)
    else:
        run.since_best += 1
        if cfg.patience and run.since_best >= cfg.patience:
            run.stopped_early = True
            warnings.warn(
                f"early stopping at step {run.step}: {metric} on dev has not improved for "
                f"{run.since_best} evaluations (best {run.best[metric]:.4f} at step {run.best['step']})",
                stacklevel=3,
            )
