"""DeepSpeed as the trainer's strategy: ``engine.backward`` / ``engine.step`` behind the same
interface as :class:`~ptft_fast.train.strategy.TorchStrategy`.

The optimizer is the run's torch AdamW (same parameter groups and weight decay rule), handed to
DeepSpeed as the client optimizer, which ZeRO partitions (stage 1: optimizer state, 2: + grads,
3: + parameters). The learning rate is set from ``lr_factor`` at every step, like TorchStrategy;
clipping and the fp16 loss scaler are DeepSpeed's (``gradient_clipping``, ``fp16`` sections).

Loss convention: the loss given to :meth:`backward` is this rank's share of the *global*
per-token mean (summed loss / labeled tokens over all ranks and micro-batches). DeepSpeed divides
by the accumulation steps and averages gradients over ranks; :meth:`backward` undoes both, so the
update equals single-process training on the global batch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ptft_fast.train.config import TrainConfig
from ptft_fast.train.schedule import START, lr_factor
from ptft_fast.train.strategy import StepResult, param_groups, set_lr


def use_cpu_accelerator_if_no_gpu() -> None:
    """DeepSpeed picks its accelerator at import: choose CPU visibly when there is no GPU."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        warnings.warn("no CUDA device: DeepSpeed runs with DS_ACCELERATOR=cpu (gloo)", stacklevel=2)
        os.environ["DS_ACCELERATOR"] = "cpu"


def init_distributed(timeout_s: float = 300.0) -> tuple[int, int]:
    """Join the process group the launcher set up (env RANK/WORLD_SIZE/MASTER_*); (rank, world).

    Started without a launcher (no RANK in the environment), the job is one rank on this machine
    rather than an MPI discovery attempt.
    """
    use_cpu_accelerator_if_no_gpu()
    import datetime
    import socket

    if "RANK" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        single = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
        os.environ.update({**single, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})

    import deepspeed

    backend = "gloo" if os.environ.get("DS_ACCELERATOR") == "cpu" else None
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def check_precision_supported(precision: str) -> None:
    """Fail before the engine is built when DeepSpeed's accelerator lacks the run's dtype (its CPU
    accelerator has bf16 but no fp16: the fp16 loss-scaling path is for GPUs)."""
    from deepspeed.accelerator import get_accelerator

    from ptft_fast.train.config import TrainConfigError

    acc = get_accelerator()
    supported = {"fp32": True, "bf16": acc.is_bf16_supported(), "fp16": acc.is_fp16_supported()}
    if not supported[precision]:
        raise TrainConfigError(
            f"precision={precision!r} is not supported by DeepSpeed's {acc.device_name()} accelerator; "
            f"use one of {[k for k, ok in supported.items() if ok]}"
        )


class DeepSpeedStrategy:
    """A DeepSpeed engine around ``model`` with the run's AdamW; ``self.engine`` is the model to call."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        ds_config: dict,
        *,
        groups: list[dict] | None = None,
        lr_at: Callable[[int, float], float] | None = None,
    ) -> None:
        """``groups`` / ``lr_at``: as :class:`~ptft_fast.train.strategy.TorchStrategy`'s."""
        import deepspeed

        from ptft_fast.train.zero_utils import register_external_parameters

        self.cfg, self.ds_config = cfg, ds_config
        self.stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        check_precision_supported(cfg.precision)
        kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
        self.budget_start = START  # (step, elapsed s) where this invocation began: run_loop sets it
        self.lr_at = lr_at or (
            lambda step, elapsed_s: cfg.lr * lr_factor(step, cfg, elapsed_s, self.budget_start)
        )
        groups = param_groups(model, cfg.weight_decay) if groups is None else groups
        optimizer = torch.optim.AdamW(groups, foreach=False, **kwargs)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config
        )
        if self.stage == 3:
            register_external_parameters(self.engine.module)
        self.world_size = self.engine.world_size
        self._micro = 0  # backward calls since the last optimizer step

    def autocast(self) -> contextlib.AbstractContextManager:
        """DeepSpeed casts the model itself (bf16/fp16 sections): no autocast."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss``: this rank's share of the global per-token mean (see the module docstring)."""
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self._micro += 1
        if self._micro < self.cfg.grad_accum_steps:
            # DeepSpeed counts micro-batches in engine.step(): a step before the boundary only
            # advances that count (the reduction and update happen at the boundary)
            self.engine.step()

    def step(self, step: int, elapsed_s: float = 0.0) -> StepResult:
        """Set the lr, let the engine clip, update (or skip on fp16 overflow) and clear grads."""
        lr = self.lr_at(step, elapsed_s)
        set_lr(self.optimizer, lr)
        scale = float(self.engine.optimizer.cur_scale) if self.cfg.precision == "fp16" else 1.0
        if self._micro != self.cfg.grad_accum_steps:
            raise RuntimeError(
                f"DeepSpeedStrategy.step after {self._micro} backward calls; the engine accumulates "
                f"exactly grad_accum_steps={self.cfg.grad_accum_steps} (every micro-batch needs a loss)"
            )
        self._micro = 0
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return StepResult(bool(self.engine.was_step_applied()), norm, lr, scale)

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def state_dict(self) -> dict:
        """Optimizer and scaler state live in the engine's checkpoint (``engine.save_checkpoint``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError("DeepSpeedStrategy state is restored by engine.load_checkpoint, not a dict")
