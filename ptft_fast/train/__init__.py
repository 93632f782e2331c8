"""ptft_fast.train — the pre-training loop behind ``ptft pretrain``.

``TrainConfig`` (config), ``Trainer`` (trainer: data, model, strategy, resume), ``TorchStrategy``
(strategy: AdamW, autocast, fp16 loss scaling, clipping — the seam for a DeepSpeed engine),
schedules, checkpoints (atomic, HF-format model + training state), metrics and the price tag.
The trainer never imports a kernel: models reach them through ``ptft_fast.ops``.
"""

from ptft_fast.train.config import TrainConfig, TrainConfigError
from ptft_fast.train.strategy import Strategy, TorchStrategy
from ptft_fast.train.trainer import Trainer, TrainingDiverged, accumulate_step

__all__ = [
    "Strategy",
    "TorchStrategy",
    "TrainConfig",
    "TrainConfigError",
    "Trainer",
    "TrainingDiverged",
    "accumulate_step",
]
