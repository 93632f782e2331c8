"""Checkpoints of a fine-tuning run, written by ``ptft_fast.train.checkpoint`` (atomic, manifest,
``latest`` pointer, global RNG, optimizer and loss scaler) with fine-tuning's own state beside them:
the position in the data (epoch, batches done, the order's generator), the dev history, the best
evaluation and its weights (for ``restore_best``), early-stopping and NaN counters.

Layout of ``OUT/checkpoints/step_XXXXXXXX/model/``: ``model.safetensors`` (every weight of the task
model, adapters and head included) and ``best.safetensors`` (the trainable parameters of the best
evaluation so far, when kept). A resumed run continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import base64
import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from ptft_fast.train import checkpoint as ckpt
from ptft_fast.utils.atomic import fix_mode

# settings that may change between a run and its resumption without changing what it computes
_FREE = ("resume", "progress", "out", "deepspeed", "report_to", "keep_last")


# RunState fields saved as they are (JSON)
_COUNTERS = ("step", "epoch", "pos", "loss_sum", "loss_n", "bad", "since_best", "elapsed", "history", "best")


@dataclass
class RunState:
    """Where a fine-tuning run is: what a checkpoint holds besides weights and optimizer."""

    gen: torch.Generator  # draws each epoch's order of the training examples
    step: int = 0
    epoch: int = 1
    pos: int = 0  # batches of this epoch done
    epoch_gen: torch.Tensor | None = None  # gen's state before drawing this epoch's order
    loss_sum: float = 0.0  # train loss since the last evaluation
    loss_n: int = 0
    bad: int = 0  # non-finite steps in a row
    since_best: int = 0  # evaluations since the best one
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_weights: list[torch.Tensor] | None = None
    stopped_early: bool = False

    def epoch_order(self, n: int) -> torch.Tensor:
        """This epoch's order of the ``n`` examples: drawn at its start, drawn again (from the
        saved generator state) when a resumed run starts in its middle."""
        if self.pos == 0 or self.epoch_gen is None:
            self.epoch_gen = self.gen.get_state()
        else:
            self.gen.set_state(self.epoch_gen)
        return torch.randperm(n, generator=self.gen)

    def to_json(self) -> dict:
        return {
            **{k: getattr(self, k) for k in _COUNTERS},
            "stopped_early": self.stopped_early,
            "gen": _b64(self.gen.get_state()),
            "epoch_gen": None if self.epoch_gen is None else _b64(self.epoch_gen),
        }

    def load_json(self, state: dict) -> None:
        for k in _COUNTERS:
            setattr(self, k, state[k])
        self.stopped_early = state["stopped_early"]
        self.gen.set_state(_unb64(state["gen"]))
        self.epoch_gen = None if state["epoch_gen"] is None else _unb64(state["epoch_gen"])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def settings(cfg) -> dict:
    """The run settings a checkpoint records (a resumed run warns about the ones that changed)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE}


def _export(model, folder: Path, best: list[torch.Tensor] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))  # shared (tied) tensors stored once
    fix_mode(folder / "model.safetensors")  # safetensors creates 0600 files
    if best is not None:
        save_file({str(i): w.contiguous() for i, w in enumerate(best)}, folder / "best.safetensors")
        fix_mode(folder / "best.safetensors")


def _import(model, folder: Path, run: RunState) -> None:
    try:
        load_model(model, str(folder / "model.safetensors"))
    except (RuntimeError, SafetensorError) as exc:
        raise ckpt.ResumeError(
            f"cannot resume from {folder.parent}: its weights do not fit this model (another model, task, "
            f"PEFT method or label set?): {str(exc).splitlines()[0]}"
        ) from None
    best = folder / "best.safetensors"
    if best.is_file():
        saved = load_file(best)
        run.best_weights = [saved[str(i)] for i in range(len(saved))]


def save_run(cfg, out: Path, model, strategy, params, run: RunState) -> Path:
    """Checkpoint ``OUT/checkpoints/step_XXXXXXXX`` (atomic; ``latest`` points at it)."""
    if getattr(strategy, "engine", None) is not None:
        from ptft_fast.finetune.distributed import save_engine_run

        return save_engine_run(cfg, out, strategy, run, settings(cfg))
    state = {"finetune": run.to_json(), "config": settings(cfg)}
    return ckpt.save_checkpoint(
        out / "checkpoints",
        run.step,
        model,
        strategy.state_dict(),
        state,
        cfg.keep_last,
        export=lambda m, folder: _export(m, folder, run.best_weights),
    )


def load_run(cfg, out: Path, model, strategy, params, run: RunState) -> Path:
    """Restore weights, optimizer, RNG and ``run`` from ``cfg.resume`` (``latest`` or a folder)."""
    if getattr(strategy, "engine", None) is not None:
        from ptft_fast.finetune.distributed import load_engine_run

        state, path = load_engine_run(cfg, out, strategy, run)
    else:
        path = ckpt.resolve(cfg.resume, out)
        state = ckpt.load_checkpoint(path, model, strategy, load=lambda m, folder: _import(m, folder, run))
    if "finetune" not in state:
        raise ckpt.ResumeError(f"cannot resume from {path}: not a fine-tuning checkpoint")
    run.load_json(state["finetune"])
    if run.best_weights is not None and len(run.best_weights) != len(params):
        raise ckpt.ResumeError(f"cannot resume from {path}: its best weights do not fit this model")
    changed = sorted(k for k, v in state.get("config", {}).items() if settings(cfg).get(k) != v)
    if changed:
        warnings.warn(
            f"resuming {path} with changed settings {changed}: the run no longer continues exactly",
            stacklevel=3,
        )
    return path
