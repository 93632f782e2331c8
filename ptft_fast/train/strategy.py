"""How a loss becomes an update: optimizer, mixed precision, loss scaling, clipping.

The trainer talks only to a :class:`Strategy` — ``autocast()``, ``backward(loss)``, ``step()``,
``zero_grad()``, ``state_dict()`` — so a DeepSpeed engine (``engine.backward`` / ``engine.step``)
can replace :class:`TorchStrategy` without touching the loop.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ptft_fast.train.config import TrainConfig
from ptft_fast.train.schedule import START, lr_factor

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """What ``Strategy.step`` did: ``stepped`` False when the update was skipped (non-finite grads)."""

    stepped: bool
    grad_norm: float  # global grad norm before clipping (inf/nan when skipped)
    lr: float
    loss_scale: float  # 1.0 unless fp16


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row (the message says how many and what to try)."""


def check_step(
    bad: int, step: int, losses: Iterable[float], result: StepResult, cfg: TrainConfig, ckpt_dir: Path
) -> int:
    """The NaN/inf policy of both loops: a step with a non-finite loss or skipped update (other than
    fp16's loss-scaler overflow) warns; ``cfg.max_bad_steps`` of them in a row raise
    :class:`TrainingDiverged`. Returns the new count of bad steps in a row (``bad`` before)."""
    losses = list(losses)
    finite_loss = all(math.isfinite(v) for v in losses)
    if finite_loss and (result.stepped or cfg.precision == "fp16"):
        return 0  # fp16: a skipped step with a finite loss is the loss scaler's overflow handling
    bad += 1
    warnings.warn(
        f"step {step}: non-finite {'loss' if not finite_loss else 'gradients'} "
        f"(loss={losses[0] if losses else None}, grad_norm={result.grad_norm}); update skipped ({bad} in a row, stop at {cfg.max_bad_steps})",
        stacklevel=3,
    )
    if bad >= cfg.max_bad_steps:
        raise TrainingDiverged(
            f"stopping at step {step}: {bad} non-finite steps in a row "
            f"(max_bad_steps={cfg.max_bad_steps}); lower lr, raise warmup_steps, use "
            f"precision=fp32/bf16 or check the data. The last good checkpoint is in {ckpt_dir}"
        )
    return bad


class Strategy(Protocol):
    def autocast(self) -> contextlib.AbstractContextManager: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self, step: int, elapsed_s: float = 0.0) -> StepResult: ...
    def zero_grad(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases, norms and 1-D parameters."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    lr: torch.Tensor | None = None,
    groups: list[dict] | None = None,
) -> torch.optim.AdamW:
    """AdamW: the fused kernel on CUDA, foreach elsewhere (on a 2-core CPU the fused CPU kernel
    measured ~6× slower than foreach for a tiny model). Chosen once, here.

    ``lr``: a 0-d tensor the learning rate is read from at each step (a CUDA graph replays the
    step with it); on CUDA the optimizer is then capturable (its step count on the device).
    ``groups``: parameter groups (default :func:`param_groups`); a group's ``lr_scale`` multiplies
    the scheduled learning rate (fine-tuning's layer-wise rates)."""
    kwargs = dict(lr=cfg.lr if lr is None else lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    groups = param_groups(model, cfg.weight_decay) if groups is None else groups
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, capturable=lr is not None, **kwargs)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"fused AdamW unavailable ({exc}); using foreach", stacklevel=2)
    # a tensor learning rate without capturable needs the single-tensor implementation
    return torch.optim.AdamW(
        groups, foreach=lr is None, capturable=lr is not None and device.type == "cuda", **kwargs
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr = ``lr`` × its ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        value = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):  # a captured step reads this tensor
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class DynamicLossScaler:
    """fp16 loss scaling: halve on overflow (the step is skipped), double after ``window`` good steps."""

    def __init__(self, init_scale: float, window: int, min_scale: float = 1.0) -> None:
        self.scale, self.window, self.min_scale, self.good_steps = init_scale, window, min_scale, 0

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale, self.good_steps = self.scale / 2.0, 0
            if self.scale < self.min_scale:
                raise FloatingPointError(
                    f"fp16 loss scale fell below {self.min_scale}: gradients overflow even unscaled; "
                    "use precision=bf16 or fp32, or lower lr"
                )
            return
        self.good_steps += 1
        if self.good_steps >= self.window:
            self.scale, self.good_steps = self.scale * 2.0, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


class TorchStrategy:
    """Single-process PyTorch: AdamW, autocast (bf16/fp16), fp16 loss scaling, grad clipping.

    The learning rate is set from :func:`lr_factor` at every step (no scheduler state to lose), or
    from ``lr_at(step, elapsed_s)`` when given (fine-tuning's schedules), times each parameter
    group's ``lr_scale`` (``groups``: default :func:`param_groups`, one scale).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        *,
        groups: list[dict] | None = None,
        lr_at: Callable[[int, float], float] | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.budget_start = START  # (step, elapsed s) where this invocation began: run_loop sets it
        self.lr_at = lr_at or (
            lambda step, elapsed_s: cfg.lr * lr_factor(step, cfg, elapsed_s, self.budget_start)
        )
        self.optimizer = build_adamw(model, cfg, device, groups=groups)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = (
            DynamicLossScaler(cfg.init_loss_scale, cfg.loss_scale_window) if cfg.precision == "fp16" else None
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.cfg.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate grads of ``loss`` (already divided by the step's labeled-token total)."""
        (loss * self.scaler.scale if self.scaler else loss).backward()

    def _grad_norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))

    def step(self, step: int, elapsed_s: float = 0.0) -> StepResult:
        """Unscale, check finiteness, clip, update (or skip) and clear the grads."""
        scale = self.scaler.scale if self.scaler else 1.0
        if self.scaler:
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(1.0 / scale)
        norm = float(self._grad_norm())
        lr = self.lr_at(step, elapsed_s)
        finite = math.isfinite(norm)
        if self.scaler:
            self.scaler.update(finite)
        if finite:
            if self.cfg.max_grad_norm and norm > self.cfg.max_grad_norm:
                coef = self.cfg.max_grad_norm / (norm + 1e-6)
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(coef)
            set_lr(self.optimizer, lr)
            self.optimizer.step()
        self.zero_grad()
        return StepResult(finite, norm, lr, scale)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
