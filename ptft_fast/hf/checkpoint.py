"""Load Hugging Face–format directories into ptft_fast models, and save them back.

A directory holds config.json plus model.safetensors (or a sharded
model.safetensors.index.json, or pytorch_model.bin read with ``weights_only=True``). Weights are
renamed through the family's table in ``ptft_fast.hf.mapping``; any missing or unexpected key is
an error that lists them.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ptft_fast.data.atomic import fix_mode
from ptft_fast.errors import UserInputError, one_line
from ptft_fast.hf.configs import from_hf_config, to_hf_config
from ptft_fast.hf.mapping import expand, is_ignored
from ptft_fast.models import build_model
from ptft_fast.models.config import ModelConfig


class CheckpointKeyError(UserInputError, KeyError):
    """Checkpoint and model disagree on parameter names; ``missing``/``unexpected`` list them."""

    def __init__(self, where: str, missing: list[str], unexpected: list[str]):
        self.missing, self.unexpected = missing, unexpected
        lines = [f"{where}: checkpoint keys do not match the model"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
        super().__init__("\n".join(lines))

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory (safetensors preferred; .bin via torch.load(weights_only=True))."""
    root = Path(path)
    single, index, binary = (
        root / "model.safetensors",
        root / "model.safetensors.index.json",
        root / "pytorch_model.bin",
    )
    if single.is_file():
        return _read(single, load_file)
    if index.is_file():
        shards = sorted(set(_read(index, lambda f: json.loads(f.read_text())["weight_map"].values())))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read(root / shard, load_file))
        return state
    if binary.is_file():
        return _read(binary, lambda f: torch.load(f, map_location="cpu", weights_only=True))
    raise FileNotFoundError(
        f"{root}: no weights found (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)"
    )


class WeightsFileError(UserInputError):
    """A weights file that cannot be read (truncated, damaged, not this format); names the file."""


def _read(path: Path, read):
    """read(path), with any failure to parse the file as a WeightsFileError naming it."""
    try:
        return read(path)
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        SafetensorError,
        pickle.UnpicklingError,
    ) as exc:
        raise WeightsFileError(
            f"{path}: cannot read the weights ({type(exc).__name__}: {one_line(exc)})"
        ) from exc


def _convert_in(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """HF tensors → our state dict, or CheckpointKeyError listing missing/unexpected HF keys."""
    rules = expand(config)
    if config.arch == "gpt2" and not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}  # original GPT-2 files have no prefix
    used = {h for r in rules for h in r.hf}
    missing = sorted(h for h in used if h not in state)
    unexpected = sorted(k for k in state if k not in used and not is_ignored(config.arch, k, used))
    if missing or unexpected:
        raise CheckpointKeyError(where, missing, unexpected)
    out = {}
    for rule in rules:
        parts = [state[h].t() if rule.transpose else state[h] for h in rule.hf]
        out[rule.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return out


def load_pretrained(
    path: str | os.PathLike, *, dtype: torch.dtype | None = None, **overrides
) -> tuple[nn.Module, ModelConfig]:
    """(model, config) from an HF-format directory; ``overrides`` change ModelConfig fields
    (e.g. ``dropout=0.0``, ``varlen=True``, ``gradient_checkpointing=True``). Like transformers'
    ``from_pretrained`` the model comes back in eval mode: call ``.train()`` to fine-tune."""
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{root}: no config.json (not a Hugging Face model directory)")
    hf = json.loads(config_file.read_text())
    state = read_state_dict(root)
    config = from_hf_config(hf, **overrides)
    model = build_model(config)
    ours = _convert_in(config, state, str(root))
    expected = set(model.state_dict())
    if set(ours) != expected:  # a table bug, not a checkpoint problem
        raise CheckpointKeyError(
            f"{root} (ptft_fast name table)", sorted(expected - set(ours)), sorted(set(ours) - expected)
        )
    model.load_state_dict(ours, strict=True)
    if dtype is not None:
        model.to(dtype)
    return model.eval(), config


def _atomic_write(target: Path, write) -> None:
    """write(tmp_path) then fsync + rename, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fix_mode(tmp)  # mkstemp and safetensors both create 0600 files
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors that ``transformers`` ``from_pretrained`` loads."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(
            f"save_pretrained: expected a ptft_fast model with a ModelConfig, got {type(model).__name__}"
        )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    ours = model.state_dict()
    rules = expand(config)
    covered = {r.ours for r in rules}
    if covered != set(ours):
        raise CheckpointKeyError(
            f"save {config.arch} (ptft_fast name table)",
            sorted(set(ours) - covered),
            sorted(covered - set(ours)),
        )
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        parts = ours[rule.ours].detach().chunk(len(rule.hf), dim=0)
        for name, t in zip(rule.hf, parts, strict=True):
            out[name] = (t.t() if rule.transpose else t).contiguous().clone().cpu()
    hf = dict(to_hf_config(config), dtype=str(next(iter(out.values())).dtype).removeprefix("torch."))
    _atomic_write(root / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
    _atomic_write(
        root / "config.json",
        lambda tmp: Path(tmp).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n"),
    )
    return root
