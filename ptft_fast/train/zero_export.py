"""Consolidate a DeepSpeed ZeRO-1/2/3 checkpoint into one HF-format model folder, on CPU.

Where the weights are: the fp32 master copy is split over the ranks' ``*_optim_states.pt``:

* ZeRO-1/2 — per parameter group, the group's parameters laid end to end (each followed by its
  ``param_alignment_paddings`` entry) in one flat vector, cut into ``world`` contiguous
  partitions (``single_partition_of_fp32_groups``); a parameter can straddle two ranks.
* ZeRO-3 — every parameter is cut into ``world`` chunks of ``ceil(numel / world)`` (the last
  padded); a rank's ``fp32_flat_groups[g]`` is its chunk of each parameter of group g, in order.

Names, shapes and group order come from ``param_shapes`` in the model-states file; frozen
parameters (not in the optimizer) and buffers from the model states too.

Memory: the rank files are opened with ``torch.load(mmap=True, weights_only=True)``, so shards
stay on disk until a parameter's slices are copied out; ``model.safetensors`` is written one
tensor at a time after a header computed from the shapes. Peak memory is about one parameter
(plus the page cache), not one copy per rank. The header needs the HF names and shapes first;
they follow from ``ptft_fast.hf.mapping`` (renames, fused-weight splits, transposes).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ptft_fast.errors import UserInputError
from ptft_fast.utils.atomic import atomic_open

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


class ExportError(UserInputError):
    """A folder that is not a complete ZeRO checkpoint (the message says what is missing)."""


def _load(path: Path) -> dict:
    """A DeepSpeed ``.pt`` memory-mapped, unpickled with ``weights_only=True`` (its three own
    classes allowed by name), so no arbitrary code runs and no tensor is read yet."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def resolve_tag(ckpt_dir: Path) -> Path:
    """A checkpoint folder (holding ``*_model_states.pt``), or its parent with a ``latest`` file."""
    ckpt_dir = Path(ckpt_dir)
    if any(ckpt_dir.glob("*model_states.pt")):
        return ckpt_dir
    latest = ckpt_dir / "latest"
    if latest.is_file():
        return ckpt_dir / latest.read_text().strip()
    raise ExportError(f"{ckpt_dir}: no *_model_states.pt and no 'latest' file: not a DeepSpeed checkpoint")


def _rank_files(tag_dir: Path, pattern: str) -> list[Path]:
    found = {}
    for f in tag_dir.glob(pattern):
        m = re.search(r"zero_pp_rank_(\d+)_", f.name)
        if m:
            found[int(m.group(1))] = f
    return [found[r] for r in sorted(found)]


@dataclass
class ZeroCheckpoint:
    """The layout of one ZeRO checkpoint (nothing but metadata is read on construction)."""

    tag_dir: Path
    stage: int
    world: int
    param_shapes: list[dict[str, torch.Size]]  # per optimizer group, in flat order
    paddings: list[list[int]]  # ZeRO-1/2 per-parameter alignment padding, per group
    optim: list[dict]  # per rank: the memory-mapped optimizer_state_dict
    states: dict  # rank 0 model states (memory-mapped): buffers, frozen params, client state

    @classmethod
    def open(cls, ckpt_dir: str | os.PathLike) -> ZeroCheckpoint:
        tag_dir = resolve_tag(Path(ckpt_dir))
        optim_files = _rank_files(tag_dir, "*_optim_states.pt")
        model_files = sorted(tag_dir.glob("*model_states.pt"))
        if not optim_files or not model_files:
            raise ExportError(f"{tag_dir}: missing *_optim_states.pt or *_model_states.pt files")
        states = _load(model_files[0])
        world = int(states["dp_world_size"])
        if len(optim_files) != world:
            raise ExportError(f"{tag_dir}: {len(optim_files)} optimizer shard files for {world} ranks")
        optim = [_load(f)["optimizer_state_dict"] for f in optim_files]
        stage = int(optim[0]["zero_stage"])
        paddings = optim[0].get("param_alignment_paddings") or [[0] * len(g) for g in states["param_shapes"]]
        return cls(tag_dir, stage, world, states["param_shapes"], paddings, optim, states)

    def _flat(self, rank: int, group: int) -> torch.Tensor:
        key = "fp32_flat_groups" if self.stage == 3 else "single_partition_of_fp32_groups"
        return self.optim[rank][key][group]

    def _read_range(self, group: int, start: int, n: int) -> torch.Tensor:
        """Elements [start, start + n) of a ZeRO-1/2 group's flat vector (rank partitions joined)."""
        pieces, offset = [], 0
        for r in range(self.world):
            part = self._flat(r, group)
            lo, hi = max(start - offset, 0), min(start + n - offset, part.numel())
            if lo < hi:
                pieces.append(part[lo:hi])
            offset += part.numel()
        out = torch.cat(pieces) if len(pieces) > 1 else pieces[0].clone()
        if out.numel() != n:
            raise ExportError(f"{self.tag_dir}: group {group} is shorter than its parameters")
        return out

    def trainable(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full fp32 tensor) of every trainable parameter, one at a time."""
        for g, shapes in enumerate(self.param_shapes):
            offset = 0
            for i, (name, shape) in enumerate(shapes.items()):
                numel = math.prod(shape)
                if self.stage == 3:
                    chunk = math.ceil(numel / self.world)
                    parts = [self._flat(r, g)[offset : offset + chunk] for r in range(self.world)]
                    yield name, torch.cat(parts)[:numel].view(shape)
                    offset += chunk
                else:
                    yield name, self._read_range(g, offset, numel).view(shape)
                    offset += numel + self.paddings[g][i]

    def frozen(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Frozen parameters (not in the optimizer): whole in ZeRO-1/2 model states, per-rank
        fragments in ZeRO-3 ones."""
        shapes = self.states.get("frozen_param_shapes") or {}
        if not shapes:
            return
        if self.stage != 3:
            for name in shapes:
                yield name, self.states["module"][name]
            return
        frags = [_load(f)["frozen_param_fragments"] for f in sorted(self.tag_dir.glob("*model_states.pt"))]
        for name, shape in shapes.items():
            yield name, torch.cat([f[name] for f in frags])[: math.prod(shape)].view(shape)

    def buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.states.get("buffer_names") or []:
            yield name, self.states["module"][name]

    def shared(self) -> dict[str, str]:
        """Tied names → the name whose tensor they share."""
        return dict(self.states.get("shared_params") or {})

    def client_state(self) -> dict:
        return self.states.get("ptft") or {}


def _write_safetensors(path: Path, specs: list[tuple[str, torch.dtype, tuple]], tensors: Iterator) -> None:
    """Write ``model.safetensors`` tensor by tensor: the header (names, dtypes, shapes, offsets)
    comes from ``specs``; ``tensors`` yields (name, tensor) in the same order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": ST_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with atomic_open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for (name, dtype, shape), (got, t) in zip(specs, tensors, strict=True):
            if got != name or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ExportError(
                    f"export: tensor {got} {tuple(t.shape)} arrived where {name} {shape} was due"
                )
            fh.write(t.contiguous().view(torch.uint8).numpy().tobytes())


def export_zero(ckpt_dir: str | os.PathLike, out: str | os.PathLike, dtype: str = "fp32") -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` (HF format) from a ZeRO checkpoint.

    ``dtype``: fp32 (the master weights as trained) or bf16. The model config is the one the run
    saved in the checkpoint's client state.
    """
    from ptft_fast.hf.configs import to_hf_config
    from ptft_fast.hf.mapping import expand
    from ptft_fast.models.config import ModelConfig

    if dtype not in DTYPES:
        raise ValueError(f"export_zero: dtype must be fp32 or bf16, got {dtype!r}")
    want = DTYPES[dtype]
    ck = ZeroCheckpoint.open(ckpt_dir)
    client = ck.client_state()
    if "model_config" not in client:
        raise ExportError(f"{ck.tag_dir}: no ptft client state (model_config): not written by ptft")
    if client.get("config", {}).get("objective") in ("electra", "spanbert"):
        raise ExportError(
            "export_zero: ELECTRA (generator + discriminator) and SpanBERT (MLM + boundary head) "
            "checkpoints are not supported yet"
        )
    config = ModelConfig(**client["model_config"])
    rules = expand(config)
    shapes: dict[str, tuple] = {}
    for g in ck.param_shapes:
        shapes.update({k: tuple(v) for k, v in g.items()})
    for src in (ck.states.get("frozen_param_shapes") or {}, {n: tuple(t.shape) for n, t in ck.buffers()}):
        shapes.update({k: tuple(v) for k, v in src.items()})
    for alias, source in ck.shared().items():
        shapes[alias] = shapes[source]
    missing = sorted({r.ours for r in rules} - set(shapes))
    if missing:
        raise ExportError(f"{ck.tag_dir}: checkpoint lacks weights {missing} of a {config.arch} model")

    specs, plan = [], {}  # plan: our name -> [(hf name, chunk index, n chunks, transpose)]
    for r in rules:
        shape = shapes[r.ours]
        part = (shape[0] // len(r.hf), *shape[1:])
        for i, hf_name in enumerate(r.hf):
            out_shape = tuple(reversed(part)) if r.transpose else part
            specs.append((hf_name, want, out_shape))
            plan.setdefault(r.ours, []).append((hf_name, i, len(r.hf), r.transpose))

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        # Our tensors arrive in checkpoint order; HF order is the rules' order. Hold a converted
        # tensor only until its turn (in practice the orders agree and nothing waits).
        pending: dict[str, torch.Tensor] = {}
        next_i = 0
        aliases = {s: [a for a, src in ck.shared().items() if src == s] for s in ck.shared().values()}
        sources = (x for it in (ck.trainable(), ck.frozen(), ck.buffers()) for x in it)
        for name, t in sources:
            for n in (name, *aliases.get(name, ())):
                for hf_name, i, k, transpose in plan.get(n, []):
                    part = t.chunk(k, dim=0)[i]
                    pending[hf_name] = (part.t() if transpose else part).to(want).contiguous()
            while next_i < len(specs) and specs[next_i][0] in pending:
                name_i = specs[next_i][0]
                yield name_i, pending.pop(name_i)
                next_i += 1
        if next_i != len(specs):
            raise ExportError(f"export: weights never produced: {[s[0] for s in specs[next_i:]]}")

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _write_safetensors(root / "model.safetensors", specs, tensors())
    hf = dict(to_hf_config(config), dtype=str(want).removeprefix("torch."))
    with atomic_open(root / "config.json") as fh:
        fh.write(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return root
