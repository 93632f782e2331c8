"""Fine-tuning hyper-parameters chosen from the model in hand and the labeled data, unless given.

One fixed recipe cannot serve a 0.4 M-parameter encoder and BERT-base: BERT's 2e-5..5e-5 for 3
epochs leaves a tiny model near the majority class, and a few hundred labels give a few dozen
updates. :func:`choose_recipe` scales them:

- learning rate with the hidden width: ``1e-3 · (128 / hidden)²`` for full fine-tuning —
  1e-3 for a 128-wide model, 2.5e-4 at 256, 2.8e-5 at BERT-base's 768, 1.6e-5 at 1024 (the
  published recipes' range); clipped to [1e-5, 2e-3]. PEFT methods train few, freshly initialised
  parameters: ``PEFT_LR_FACTOR`` × that, at most 1e-2;
- batch size with the number of labeled examples: 8 below 200, 16 below 5,000, else 32;
- epochs so the run makes at least ``MIN_STEPS`` optimizer steps (a small labeled set gets
  as many updates as a large one), between ``MIN_EPOCHS`` and ``MAX_EPOCHS``;
- sequence pooling from the family (:func:`default_pooling`).

The constants come from runs of ``benchmarks/bench_transfer.py`` (README): at width 128, a model
pre-trained 2,000 steps scored 52.6 / 56.8 / 60.7 % at 60 labels with lr 3e-4 / 1e-3 / 3e-3 and
79.5 / 83.4 / 81.2 % at 670; from scratch 54.9 / 54.5 / 50.3 and 84.7 / 86.0 / 84.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Defaults of ``ptft finetune`` that the transfer benchmark uses too (one place, no drift).
MAX_LENGTH = 128  # tokens per example
LORA_R, LORA_ALPHA = 8, 16.0

FULL_LR_AT_128 = 1e-3  # full fine-tuning at hidden width 128; scaled by (128 / width)²
LR_RANGE = (1e-5, 2e-3)
PEFT_LR_FACTOR = 10.0
PEFT_LR_MAX = 1e-2
MIN_STEPS = 400
MIN_EPOCHS, MAX_EPOCHS = 3, 100


@dataclass
class Recipe:
    lr: float
    epochs: int
    batch_size: int
    chosen: tuple[str, ...]  # which of lr / epochs / batch_size were chosen here (not given)

    def describe(self, hidden: int, num_examples: int) -> str:
        """One line saying what was chosen and from what (printed by ``ptft finetune``)."""
        steps = self.epochs * math.ceil(num_examples / self.batch_size)
        why = {
            "lr": f"lr {self.lr:.2g} (hidden size {hidden})",
            "batch_size": f"batch size {self.batch_size} ({num_examples} labeled examples)",
            "epochs": f"{self.epochs} epochs ({steps} optimizer steps, at least {MIN_STEPS})",
        }
        given = [k for k in ("lr", "batch_size", "epochs") if k not in self.chosen]
        parts = [why[k] for k in ("lr", "batch_size", "epochs") if k in self.chosen]
        line = "fine-tuning recipe: " + ("; ".join(parts) if parts else "all given")
        if parts:
            line += " — chosen for this model and data; override with --lr/--batch-size/--epochs"
        if given:
            line += f" (given: {', '.join(given)})"
        return line


def default_lr(hidden: int, peft: str = "none") -> float:
    """Peak learning rate for a backbone of width ``hidden`` (see the module docstring)."""
    lo, hi = LR_RANGE
    lr = min(hi, max(lo, FULL_LR_AT_128 * (128 / hidden) ** 2))
    return lr if peft == "none" else min(PEFT_LR_MAX, PEFT_LR_FACTOR * lr)


def default_pooling(arch: str) -> str:
    """Sequence pooling: the masked mean for BERT/RoBERTa encoders — masked-LM pre-training never
    trains the [CLS] state and the pooler starts fresh (the mean scored 3-5 points higher on the
    embedded task, pre-trained and from scratch alike); the family's own pooling otherwise (GPT-2:
    last token, BART: final decoder state)."""
    return "mean" if arch in ("bert", "roberta") else "auto"


def default_batch_size(num_examples: int) -> int:
    return 8 if num_examples < 200 else 16 if num_examples < 5000 else 32


def default_epochs(num_examples: int, batch_size: int) -> int:
    per_epoch = max(1, math.ceil(num_examples / batch_size))
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_STEPS / per_epoch)))


def choose_recipe(
    hidden: int,
    num_examples: int,
    *,
    peft: str = "none",
    lr: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
) -> Recipe:
    """The fine-tuning recipe: given values kept, the others chosen from the backbone width
    ``hidden`` and the number of labeled training examples."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    chosen = tuple(k for k, v in (("lr", lr), ("batch_size", batch_size), ("epochs", epochs)) if v is None)
    bs = batch_size or default_batch_size(num_examples)
    return Recipe(
        lr=lr if lr is not None else default_lr(hidden, peft),
        epochs=epochs or default_epochs(num_examples, bs),
        batch_size=bs,
        chosen=chosen,
    )
