"""Load Hugging Face–format directories into ptft_fast models, and save them back.

A directory holds config.json plus model.safetensors, a sharded model.safetensors.index.json,
pytorch_model.bin or a sharded pytorch_model.bin.index.json (.bin files are read with
``weights_only=True``; shard names in an index must stay inside the folder). Weights are renamed
through the family's table in ``ptft_fast.hf.mapping``. What transformers loads, this loads: keys
it fills itself (``mapping.OPTIONAL``) and keys no rule uses are warnings; a missing key that
transformers would initialize at random, a shape that does not fit, or a head that would be
tied where the checkpoint's is not, is an error naming the key.
"""

from __future__ import annotations

import json
import os
import pickle
import posixpath
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ptft_fast.errors import UserInputError, one_line
from ptft_fast.hf.configs import UnsupportedCheckpointError, from_hf_config, to_hf_config
from ptft_fast.hf.mapping import OPTIONAL, expand, is_ignored
from ptft_fast.models import build_model
from ptft_fast.models.config import ModelConfig
from ptft_fast.utils.atomic import atomic_save_safetensors, atomic_write_json

# With tie_word_embeddings=false, transformers gives these their own tensors; ptft_fast's models
# tie them (one embedding, a tied MLM head): (HF key, the key it would be tied to).
_UNTIED_COPIES = {
    "bert": (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),),
    "roberta": (("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),),
    "bart": (
        ("model.encoder.embed_tokens.weight", "model.shared.weight"),
        ("model.decoder.embed_tokens.weight", "model.shared.weight"),
    ),
}
# Untied MLM heads compute with their decoder's own bias: (decoder bias, the bias ptft_fast loads).
_UNTIED_BIAS = {
    "bert": ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    "roberta": ("lm_head.decoder.bias", "lm_head.bias"),
}


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


def _shards(root: Path, index: Path) -> list[Path]:
    """The shard files an index names, each confined to ``root`` (no absolute or ``..`` names)."""
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise UnsupportedCheckpointError(
            f"{index}: not a weight index ({type(exc).__name__}: {exc})"
        ) from None
    paths = []
    for name in names:
        clean = posixpath.normpath(name.replace("\\", "/")) if isinstance(name, str) else "/"
        if clean.startswith(("/", "../")) or clean == ".." or ":" in clean:
            raise UnsupportedCheckpointError(f"{index}: shard {name!r} lies outside the model folder")
        path = root / clean
        if not path.is_file():
            raise FileNotFoundError(f"{index}: shard {name!r} not found in {root}")
        paths.append(path)
    return paths


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory (safetensors preferred; .bin via torch.load(weights_only=True))."""
    root = Path(path)
    sources = (
        ("model.safetensors", load_file, False),
        ("model.safetensors.index.json", load_file, True),
        ("pytorch_model.bin", _load_bin, False),
        ("pytorch_model.bin.index.json", _load_bin, True),
    )
    for name, load, sharded in sources:
        file = root / name
        if not file.is_file():
            continue
        if not sharded:
            return _read(file, load)
        state: dict[str, torch.Tensor] = {}
        for shard in _shards(root, file):
            state.update(_read(shard, load))
        return state
    raise FileNotFoundError(f"{root}: no weights found (looked for {', '.join(n for n, _, _ in sources)})")


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


def _fill_optional(config: ModelConfig, state: dict, used: set[str], shapes: dict, where: str) -> dict:
    """``state`` with the missing optional keys (mapping.OPTIONAL) taken from their other names or
    zero-filled, as transformers does, with a warning."""
    filled = []
    for key, others in OPTIONAL.get(config.arch, {}).items():
        if key in state or key not in used:
            continue
        alias = next((k for k in others if k in state), None)
        if alias is not None:
            state = {**state, key: state[alias]}
        else:
            state = {**state, key: torch.zeros(shapes[key])}
            filled.append(key)
    if filled:
        warnings.warn(
            f"{where}: {', '.join(filled)} not in the checkpoint; zeros, as transformers does", stacklevel=3
        )
    return state


def _convert_in(
    config: ModelConfig, state: dict[str, torch.Tensor], where: str, shapes: dict[str, tuple]
) -> dict[str, torch.Tensor]:
    """HF tensors → our state dict, or CheckpointKeyError listing missing (and unexpected) HF keys.
    ``shapes``: our tensors' shapes, to zero-fill optional keys and to check every tensor's shape."""
    rules = expand(config)
    if config.arch == "gpt2" and not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}  # original GPT-2 files have no prefix
    used = {h for r in rules for h in r.hf}
    hf_shapes = {r.hf[0]: shapes[r.ours] for r in rules if len(r.hf) == 1 and not r.transpose}
    state = _fill_optional(config, state, used, hf_shapes, where)
    missing = sorted(h for h in used if h not in state)
    unexpected = sorted(k for k in state if k not in used and not is_ignored(config.arch, k, used))
    if missing:
        raise CheckpointKeyError(where, missing, unexpected)
    if unexpected:
        warnings.warn(
            f"{where}: {len(unexpected)} checkpoint key(s) the {config.arch} model does not use, ignored "
            f"(as transformers does): {', '.join(unexpected)}",
            stacklevel=3,
        )
    out = {}
    for rule in rules:
        parts = [state[h].t() if rule.transpose else state[h] for h in rule.hf]
        out[rule.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(out[rule.ours].shape) != tuple(shapes[rule.ours]):
            got = [tuple(state[h].shape) for h in rule.hf]
            raise UnsupportedCheckpointError(
                f"{where}: {' + '.join(rule.hf)} has shape {got[0] if len(got) == 1 else got}, the config "
                f"implies {tuple(shapes[rule.ours])} for {rule.ours}"
            )
    return out


def _untied(hf: dict, arch: str, state: dict, where: str) -> dict:
    """``state`` of a tie_word_embeddings=false checkpoint as ptft_fast's tied layout reads it:
    refused where a tensor ptft_fast ties differs from the one it would be tied to (the model would
    compute something else); an untied MLM head's decoder bias becomes the MLM bias."""
    if hf.get("tie_word_embeddings", True) is not False:
        return state
    for copy, source in _UNTIED_COPIES.get(arch, ()):
        if copy in state and not torch.equal(state[copy], state.get(source, torch.empty(0))):
            raise UnsupportedCheckpointError(
                f"{where}: tie_word_embeddings=false with its own {copy}: ptft_fast's {arch} model ties it to {source}"
            )
    if arch in _UNTIED_BIAS and _UNTIED_BIAS[arch][0] in state:
        decoder_bias, bias = _UNTIED_BIAS[arch]
        state = {**state, bias: state[decoder_bias]}
    return state


def _dtype(hf: dict, dtype, state: dict, where: str) -> torch.dtype | None:
    """The dtype to load in: ``dtype``; "auto" → config.json's dtype (torch_dtype in older files),
    else the weights' own; None → float32 (a warning when config.json names another)."""
    named = hf.get("dtype", hf.get("torch_dtype"))
    resolved = getattr(torch, named, None) if isinstance(named, str) else None
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        if named is not None and dtype == "auto":
            raise UnsupportedCheckpointError(
                f"{where}: config dtype={named!r} is not a floating-point torch dtype"
            )
        resolved = None
    if dtype == "auto":
        floats = [t.dtype for t in state.values() if t.is_floating_point()]
        return resolved or (floats[0] if floats else None)
    if dtype is None and resolved not in (None, torch.float32):
        warnings.warn(
            f"{where}: config dtype={named}; loaded in float32 (dtype='auto' keeps {named}, as "
            "transformers' from_pretrained does)",
            stacklevel=3,
        )
    return dtype


def load_pretrained(
    path: str | os.PathLike, *, dtype: torch.dtype | str | None = None, **overrides
) -> tuple[nn.Module, ModelConfig]:
    """(model, config) from an HF-format directory; ``overrides`` change ModelConfig fields
    (e.g. ``dropout=0.0``, ``varlen=True``, ``gradient_checkpointing=True``). Like transformers'
    ``from_pretrained`` the model comes back in eval mode: call ``.train()`` to fine-tune.

    ``dtype``: None → float32 (for training with float32 master weights); a torch dtype; or
    "auto" → config.json's ``dtype``/``torch_dtype``, as transformers' default."""
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{root}: no config.json (not a Hugging Face model directory)")
    hf = json.loads(config_file.read_text())
    config = from_hf_config(hf, **overrides)
    state = read_state_dict(root)
    state = _untied(hf, config.arch, state, str(root))
    dtype = _dtype(hf, dtype, state, str(root))
    model = build_model(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = _convert_in(config, state, str(root), expected)
    if set(ours) != set(expected):  # a table bug, not a checkpoint problem
        raise CheckpointKeyError(
            f"{root} (ptft_fast name table)",
            sorted(set(expected) - set(ours)),
            sorted(set(ours) - set(expected)),
        )
    model.load_state_dict(ours, strict=True)
    if dtype is not None:
        model.to(dtype)
    return model.eval(), config


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
    if not config.tie_word_embeddings:  # transformers 5 then reads these as tensors of their own
        out.update({copy: out[source].clone() for copy, source in _UNTIED_COPIES.get(config.arch, ())})
    hf = dict(to_hf_config(config), dtype=str(next(iter(out.values())).dtype).removeprefix("torch."))
    atomic_save_safetensors(root / "model.safetensors", out, metadata={"format": "pt"})
    atomic_write_json(root / "config.json", hf, sort_keys=True)
    return root
