"""Fine-tuning: task heads, task data readers, metrics, the embedded stdlib-docstring task,
a small training loop, instruction tuning and in-context (k-shot) evaluation."""

from __future__ import annotations

from ptft_fast.finetune.embedded import docstring_task
from ptft_fast.finetune.heads import TaskModel
from ptft_fast.finetune.loop import FinetuneConfig, History, train
from ptft_fast.finetune.readers import Columns, DataError, Example, read_conll, read_examples, read_squad

__all__ = [
    "Columns",
    "DataError",
    "Example",
    "FinetuneConfig",
    "History",
    "TaskModel",
    "docstring_task",
    "read_conll",
    "read_examples",
    "read_squad",
    "train",
]
