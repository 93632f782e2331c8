"""``--report-to``: metric rows to TensorBoard, Weights & Biases or MLflow, beside the JSONL/CSV log.

A row ``{"kind": "train", "step": 10, "loss": 2.1, "lr": 1e-3, ...}`` becomes one scalar per
numeric key, named ``<kind>/<key>`` (``train/loss``, ``eval/eval_loss``, ``dev/accuracy``) at
``step``. TensorBoard's event files go to ``OUT/tensorboard/`` (``torch.utils.tensorboard``, which
writes through the ``tensorboard`` package); wandb and mlflow are optional extras
(``pip install 'ptft_fast[wandb]'`` / ``'ptft_fast[mlflow]'``): asking for one that is not
installed is a one-line error before any work. A resumed run purges the TensorBoard events after
its checkpoint's step (rows a killed run wrote past it are replaced, as in metrics.jsonl).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from ptft_fast.errors import UserInputError

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class ReportError(UserInputError):
    """A --report-to target that cannot be used here (unknown, or its package not installed)."""


def require(name: str) -> None:
    """Raise ReportError unless ``name`` is a known target whose package is importable."""
    if name not in REPORT_TO:
        raise ReportError(f"--report-to must be one of {'|'.join(REPORT_TO)}, got {name!r}")
    package = _PACKAGE.get(name)
    if package and importlib.util.find_spec(package) is None:
        extra = f"pip install 'ptft_fast[{name}]'" if name != "tensorboard" else "pip install tensorboard"
        raise ReportError(f"--report-to {name} needs the {package} package, which is not installed: {extra}")


def scalars(row: dict) -> dict[str, float]:
    """The numeric entries of a metrics row as ``{"<kind>/<key>": value}`` (step and kind left out)."""
    kind = row.get("kind", "train")
    return {
        f"{kind}/{k}": float(v)
        for k, v in row.items()
        if k not in ("kind", "step") and isinstance(v, int | float) and not isinstance(v, bool)
    }


class NoReporter:
    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardReporter:
    """Event files in ``out/tensorboard``; ``resume_step``: drop events after it (a resumed run)."""

    def __init__(self, out: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(out) / "tensorboard"
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def write(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, out: Path, run_name: str, resume_step: int | None = None) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="ptft_fast", name=run_name or None, dir=str(out), resume="allow")

    def write(self, row: dict) -> None:
        self.wandb.log(scalars(row), step=row["step"])

    def close(self) -> None:
        self.wandb.finish()


class MlflowReporter:
    def __init__(self, out: Path, run_name: str, resume_step: int | None = None) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_name or None)

    def write(self, row: dict) -> None:
        self.mlflow.log_metrics(scalars(row), step=row["step"])

    def close(self) -> None:
        self.mlflow.end_run()


def open_reporter(name: str, out: Path, *, run_name: str = "", resume_step: int | None = None):
    """The reporter for ``--report-to name`` (``none``: one that does nothing)."""
    require(name)
    if name == "tensorboard":
        return TensorBoardReporter(out, resume_step)
    if name == "wandb":
        return WandbReporter(out, run_name, resume_step)
    if name == "mlflow":
        return MlflowReporter(out, run_name, resume_step)
    return NoReporter()
