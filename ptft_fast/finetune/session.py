"""Loading a model directory for fine-tuning / prompting: HF-format weights (config.json +
model.safetensors, via ``ptft_fast.hf``) and ``tokenizer.json``; task data by task kind."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ptft_fast.finetune.embedded import docstring_task
from ptft_fast.finetune.readers import Columns, DataError, read_conll, read_examples, read_squad

EMBEDDED = "stdlib-docstrings"  # --train/--eval value selecting the embedded task


INITS = ("pretrained", "random")


def load_model_dir(path: str, *, init: str = "pretrained", seed: int = 0, **overrides):
    """(model, config, tokenizer) from a directory holding config.json, model.safetensors and
    tokenizer.json. ``init="random"``: the same architecture and tokenizer, weights drawn afresh
    (seeded by ``seed``) — the from-scratch baseline of a transfer comparison."""
    import torch

    from ptft_fast.data.tokenizer import PtftTokenizer
    from ptft_fast.hf import load_pretrained
    from ptft_fast.models import build_model

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    model, config = load_pretrained(path, **overrides)
    if init == "random":
        torch.manual_seed(seed)
        model = build_model(config)
    tokenizer = PtftTokenizer.from_file(path)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    return model, config, tokenizer


def load_task_data(task: str, train: str, evaluation: str, columns: Columns, labels: list[str] | None):
    """(train examples, eval examples, label list or None) for a task kind."""
    if train == EMBEDDED or evaluation == EMBEDDED:
        if task not in ("cls", "seq2seq"):
            raise ValueError(f"the embedded task {EMBEDDED!r} is a classification task (cls or seq2seq)")
        tr, ev, names = docstring_task()
        return tr, ev, names
    if task == "tok":
        tr = read_conll(train, label_set=labels)
        tags = labels or sorted({t for e in tr for t in e.tags})
        return tr, read_conll(evaluation, label_set=tags), tags
    if task == "qa":
        return read_squad(train), read_squad(evaluation), None
    if task == "instruct":
        tr, ev = read_examples(train, columns), read_examples(evaluation, columns)
        for e in (*tr, *ev):
            if e.label is None or not str(e.label).strip():
                raise DataError(f"{e.where}: empty or missing response column {columns.label!r}")
        return tr, ev, None
    if task == "reg":
        tr = read_examples(train, columns, regression=True)
        ev = read_examples(evaluation, columns, regression=True)
        return _labeled(tr, columns), _labeled(ev, columns), None
    tr = _labeled(read_examples(train, columns, label_set=labels), columns)
    names = labels or sorted({str(e.label) for e in tr})
    if task == "seq2seq":
        return tr, _labeled(read_examples(evaluation, columns), columns), None
    ev = _labeled(read_examples(evaluation, columns, label_set=labels), columns)  # strict only with --labels
    unseen = sorted({str(e.label) for e in ev} - set(names))
    if unseen:
        count = sum(str(e.label) in unseen for e in ev)
        warnings.warn(
            f"{evaluation}: label(s) {unseen} appear only in the eval file ({count} examples): added "
            "to the label set, but the model never trains on them, so those examples count as "
            "errors; --labels gives the label set explicitly",
            stacklevel=2,
        )
        names = names + unseen
    return tr, ev, names


def _labeled(examples: list, columns: Columns) -> list:
    """``examples`` if every one has a label; else a DataError naming the first without one (a
    file without the label column trains nothing: it is refused before any work)."""
    for e in examples:
        if e.label is None or not str(e.label).strip():
            raise DataError(f"{e.where}: no label in column {columns.label!r} (set it with --label-column)")
    return examples


def write_task_card(out: Path, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "task.json").write_text(json.dumps(fields, indent=2, sort_keys=True))


__all__ = ["EMBEDDED", "DataError", "load_model_dir", "load_task_data", "write_task_card"]
