"""LoRA and (IA)³ weights of a ptft_fast model in the peft library's adapter format, and back.

peft keeps one adapter per transformers module (``base_model.model.<module>.lora_A.weight``,
``.lora_B.weight``, ``.ia3_l``) and an ``adapter_config.json`` naming those modules; an adapter
written here loads with ``peft.PeftModel.from_pretrained(<the base model in transformers>, dir)``
and computes what the ptft_fast model computes. Our projections are fused where transformers'
are not (q/k/v, k/v, T5 v1.1's two input projections): a LoRA update on a fused projection is one
adapter per part with the shared A and B's rows of that part (rank r each, exact); an (IA)³ vector
is cut the same way, the query part of a fused q/k/v left out (GPT-2 keeps c_attn fused: its
vector gets ones there). Module names come from the family's table in ``ptft_fast.hf.mapping``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from ptft_fast.errors import UserInputError
from ptft_fast.hf.mapping import expand
from ptft_fast.models.config import ModelConfig
from ptft_fast.nn import LoRALinear
from ptft_fast.peft.ia3 import IA3Linear
from ptft_fast.utils.atomic import atomic_save_safetensors, atomic_write_json

PREFIX = "base_model.model."  # how peft names the wrapped transformers model's parameters
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class NotExportable(UserInputError):
    """A PEFT module that has no transformers counterpart (e.g. LoRA on a task head)."""


@dataclass(frozen=True)
class Part:
    hf: str  # transformers module name
    start: int  # its rows in our (fused) output
    stop: int


def _parts(config: ModelConfig) -> dict[str, list[str]]:
    """Our linear module name → the transformers modules it fuses, in row order."""
    out = {}
    for rule in expand(config):
        if rule.ours.endswith(".weight") and all(h.endswith(".weight") for h in rule.hf):
            out[rule.ours.removesuffix(".weight")] = [h.removesuffix(".weight") for h in rule.hf]
    return out


def _adapted(model: nn.Module) -> dict[str, nn.Module]:
    """Name → LoRALinear / IA3Linear module of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, IA3Linear))}


def _split(name: str, out_features: int, table: dict[str, list[str]], prefix: str) -> list[Part]:
    key = name.removeprefix(prefix)
    if key not in table:
        raise NotExportable(f"{name} has no transformers counterpart (not a projection of the base model)")
    hf = table[key]
    size = out_features // len(hf)
    return [Part(h, i * size, (i + 1) * size) for i, h in enumerate(hf)]


def exportable(model: nn.Module, config: ModelConfig, prefix: str = "") -> str | None:
    """None if every LoRA / (IA)³ module of ``model`` maps onto the base model in transformers,
    else the reason it does not. ``prefix``: where the base model sits in ``model``
    (``"backbone."`` in a task model)."""
    table = _parts(config)
    for name in _adapted(model):
        if not name.startswith(prefix) or name.removeprefix(prefix) not in table:
            return f"{name} has no transformers counterpart"
    return None


def to_peft(
    model: nn.Module, config: ModelConfig, base_model: str, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, adapter config) in peft's format for the LoRA or (IA)³ modules of ``model``
    (one method per model). ``base_model``: the base model folder, recorded for peft."""
    table = _parts(config)
    modules = _adapted(model)
    kinds = {type(m) for m in modules.values()}
    if len(kinds) != 1:
        raise ValueError(
            f"to_peft: expected LoRA or (IA)³ modules (one kind), found {sorted(k.__name__ for k in kinds)}"
        )
    state: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    feedforward: list[str] = []
    for name, m in modules.items():
        parts = _split(
            name, m.out_features if isinstance(m, LoRALinear) else m.base.out_features, table, prefix
        )
        for part in parts:
            key = PREFIX + part.hf
            if isinstance(m, LoRALinear):
                state[f"{key}.lora_A.weight"] = m.lora_A.detach().clone()
                state[f"{key}.lora_B.weight"] = m.lora_B.detach()[part.start : part.stop].clone()
            elif m.feedforward:
                state[f"{key}.ia3_l"] = m.ia3_l.detach().view(1, -1).clone()
                feedforward.append(part.hf)
            elif part.stop <= m.skip:
                continue  # the query part of a fused q/k/v: (IA)³ leaves it alone
            else:
                full = torch.cat([m.ia3_l.new_ones(m.skip), m.ia3_l.detach()])
                state[f"{key}.ia3_l"] = full[part.start : part.stop].view(-1, 1).clone()
            targets.append(part.hf)
    first = next(iter(modules.values()))
    common = {
        "base_model_name_or_path": base_model,
        "target_modules": sorted(targets),
        "fan_in_fan_out": config.arch == "gpt2",  # GPT-2's Conv1D stores (in, out)
        "inference_mode": True,
        "modules_to_save": None,
        "task_type": None,
    }
    if isinstance(first, LoRALinear):
        ranks = {(m.r, m.alpha) for m in modules.values()}
        if len(ranks) != 1:
            raise ValueError(f"to_peft: LoRA modules differ in rank/alpha: {sorted(ranks)}")
        (r, alpha), dropout = ranks.pop(), first.dropout
        adapter = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "bias": "none"}
    else:
        adapter = {"peft_type": "IA3", "feedforward_modules": sorted(feedforward), "init_ia3_weights": True}
    return state, {**common, **adapter}


def from_peft(
    model: nn.Module, config: ModelConfig, state: dict[str, torch.Tensor], prefix: str = ""
) -> list[str]:
    """Copy a peft-format state dict into the LoRA / (IA)³ modules of ``model`` (already wrapped
    with the same targets); returns the module names loaded. A fused projection needs every part
    present with one shared LoRA A (what :func:`to_peft` writes)."""
    table = _parts(config)
    loaded = []
    with torch.no_grad():
        for name, m in _adapted(model).items():
            out = m.out_features if isinstance(m, LoRALinear) else m.base.out_features
            parts = _split(name, out, table, prefix)
            key = [PREFIX + p.hf for p in parts]
            if isinstance(m, LoRALinear):
                a = [_take(state, f"{k}.lora_A.weight", m.lora_A.shape) for k in key]
                if any(not torch.equal(a[0], x) for x in a[1:]):
                    raise UserInputError(f"{name}: the peft adapter's parts {key} have different lora_A")
                m.lora_A.copy_(a[0])
                m.lora_B.copy_(torch.cat([_take(state, f"{k}.lora_B.weight", None) for k in key]))
            elif m.feedforward:
                m.ia3_l.copy_(_take(state, f"{key[0]}.ia3_l", None).flatten())
            else:
                full = torch.cat(
                    [_take(state, f"{k}.ia3_l", None).flatten() if p.stop > m.skip else m.ia3_l.new_ones(p.stop - p.start)
                     for k, p in zip(key, parts)]
                )  # fmt: skip
                if not torch.all(full[: m.skip] == 1):
                    raise UserInputError(
                        f"{name}: the peft adapter scales the queries, which (IA)³ here leaves alone"
                    )
                m.ia3_l.copy_(full[m.skip :])
            loaded.append(name)
    return loaded


def _take(state: dict[str, torch.Tensor], key: str, shape) -> torch.Tensor:
    if key not in state:
        raise UserInputError(f"peft adapter: no tensor {key!r}")
    t = state[key]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise UserInputError(
            f"peft adapter: {key} has shape {tuple(t.shape)}, the model needs {tuple(shape)}"
        )
    return t


def save(directory: str | os.PathLike, state: dict[str, torch.Tensor], adapter_config: dict) -> None:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` (atomically, umask mode)."""
    state = {k: v.contiguous() for k, v in state.items()}
    atomic_save_safetensors(os.path.join(directory, WEIGHTS_FILE), state, metadata={"format": "pt"})
    atomic_write_json(os.path.join(directory, CONFIG_FILE), adapter_config, sort_keys=True)


def load(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, adapter config) of a peft adapter folder."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, CONFIG_FILE)) as f:
        adapter_config = json.load(f)
    return load_file(os.path.join(directory, WEIGHTS_FILE)), adapter_config
