"""Model selection on a validation split, never on the test split.

``ptft finetune`` keeps the epoch with the best score on a *dev* split: a ``--dev`` file, or a
seeded share of ``--train`` carved off before training (:func:`carve_dev`). The ``--eval`` file is
scored once, on the kept model, after training; nothing read from it reaches the choice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from ptft_fast.errors import UserInputError

T = TypeVar("T")

DEFAULT_DEV_FRACTION = 0.1


class SplitError(UserInputError):
    """A dev split cannot be carved from the training examples."""


def carve_dev(examples: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, dev): ``round(fraction · n)`` examples (at least 1) drawn with ``seed`` become the
    dev split, the others stay for training in their original order."""
    n = len(examples)
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"--dev-fraction must be in (0, 1), got {fraction:g}")
    size = max(1, round(fraction * n))
    if n - size < 1:
        raise SplitError(
            f"--train has {n} example(s): too few to carve a dev split of {fraction:g} from it "
            "and keep examples to train on; give a --dev file"
        )
    chosen = set(random.Random(seed).sample(range(n), size))
    train = [e for i, e in enumerate(examples) if i not in chosen]
    dev = [e for i, e in enumerate(examples) if i in chosen]
    return train, dev


def scores_text(scores: dict) -> str:
    """``accuracy=0.8125 macro_f1=0.8000`` (floats to 4 places, other values as they are)."""
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items())
