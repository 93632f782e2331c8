"""Shared PEFT plumbing: module matching, freezing, trainable-parameter report, adapter save/load.

Convention: every PEFT parameter's name contains one of ``PEFT_MARKERS``; the task head lives
under a module named ``head`` (``ptft_fast.finetune.heads``) or a name listed in
``trainable_modules`` and is always trainable and saved with the adapter.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn

from ptft_fast.utils.atomic import atomic_save_safetensors, atomic_write_json

PEFT_MARKERS = ("lora_A", "lora_B", "ia3_", "adapter_", "prefix_", "soft_prompt")
DEFAULT_HEAD_NAMES = ("head", "classifier", "score", "qa_outputs", "scalar_mix")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def matches(name: str, targets: str | Iterable[str]) -> bool:
    """peft-style target matching: a string is a regex that must match the whole module name;
    a list matches a module whose name equals an entry or ends with "." + entry."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted path ``name`` to ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def is_peft_param(name: str) -> bool:
    return any(m in name for m in PEFT_MARKERS)


def is_head_param(name: str, head_names: Iterable[str] = DEFAULT_HEAD_NAMES) -> bool:
    parts = name.split(".")
    return any(h in parts for h in head_names)


def mark_trainable(model: nn.Module, head_names: Iterable[str] = DEFAULT_HEAD_NAMES) -> None:
    """Freeze everything except PEFT parameters and the task head (always trainable)."""
    head_names = tuple(head_names)
    for name, p in model.named_parameters():
        p.requires_grad_(is_peft_param(name) or is_head_param(name, head_names))


@dataclass
class ParamReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def param_report(model: nn.Module) -> ParamReport:
    """Counts of trainable and all parameters (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return ParamReport(trainable, total)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter (PEFT weights and the task head), detached and contiguous."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, directory: str | os.PathLike, config: dict) -> None:
    """Write ``adapter_model.safetensors`` (trainable weights only) and ``adapter_config.json``."""
    os.makedirs(directory, exist_ok=True)
    state = adapter_state_dict(model)
    if not state:
        raise ValueError("save_adapter: the model has no trainable parameters to save")
    atomic_save_safetensors(os.path.join(directory, ADAPTER_WEIGHTS), state)
    atomic_write_json(os.path.join(directory, ADAPTER_CONFIG), config, sort_keys=True)


def read_adapter_config(directory: str | os.PathLike) -> dict:
    path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapter config at {path}")
    with open(path) as f:
        return json.load(f)


def load_adapter_weights(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Copy saved adapter weights into ``model`` (already wrapped with the same PEFT config).

    Raises if a saved tensor has no home or a shape differs; returns the loaded names.
    """
    state = load_file(os.path.join(directory, ADAPTER_WEIGHTS))
    params = dict(model.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise ValueError(f"load_adapter: {len(missing)} saved tensors not in the model, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise ValueError(
                    f"load_adapter: {k} has shape {tuple(v.shape)} in the file, {tuple(params[k].shape)} in the model"
                )
            params[k].copy_(v)
    return sorted(state)
