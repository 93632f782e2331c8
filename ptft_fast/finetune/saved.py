"""A fine-tuned model on disk: what ``ptft finetune`` writes to ``OUT/best``, how ``ptft predict``
and ``ptft merge`` load it back onto its base model.

``task.json`` holds the :class:`TaskSpec` (task, labels, PEFT method and settings, pooling, ...),
the base model's folder and which of four layouts the weights have:

- ``full``: the whole backbone as a Hugging Face folder (config.json + model.safetensors, which
  transformers loads) and, for task heads, ``head.safetensors`` (full fine-tuning, merged models);
- ``head``: ``head.safetensors`` only, on the unchanged base model (``--freeze-backbone``);
- ``peft``: a LoRA or (IA)³ adapter in the peft library's format (``adapter_model.safetensors`` +
  ``adapter_config.json``, loadable by ``peft.PeftModel.from_pretrained`` on the base model in
  transformers) and ``head.safetensors`` beside it;
- ``native``: the other methods' weights (adapters, prefix, prompt) and the head in
  ``adapter_model.safetensors`` with ptft_fast's names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from ptft_fast.errors import UserInputError
from ptft_fast.finetune.heads import TaskModel, head_state_dict, load_head_state_dict
from ptft_fast.utils.atomic import atomic_save_safetensors, atomic_write_json

TASK_CARD = "task.json"
HEAD_FILE = "head.safetensors"
LAYOUTS = ("full", "head", "peft", "native")


@dataclass
class TaskSpec:
    """How a fine-tuned model is built on its backbone (everything but the weights)."""

    task: str
    labels: list[str] | None = None
    peft: str = "none"
    peft_config: dict = field(default_factory=dict)  # the method's config fields
    pooling: str = "auto"
    freeze_backbone: bool = False
    max_length: int = 128
    template: str | None = None  # instruct: prompt template with {prompt}
    glue: str | None = None  # GLUE preset name
    text_column: str = "sentence"  # columns of .tsv/.csv/.jsonl task files (the prompt's for instruct)
    text_pair_column: str | None = None
    doc_stride: int = 32  # qa
    max_answer_len: int = 30  # qa

    @classmethod
    def from_card(cls, card: dict) -> TaskSpec:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in card.items() if k in names})


@dataclass
class Finetuned:
    model: nn.Module  # a TaskModel, or the (PEFT-wrapped) LM for seq2seq / instruct
    spec: TaskSpec
    tokenizer: object
    config: object  # the backbone's ModelConfig
    card: dict


def peft_config(spec: TaskSpec):
    """The PEFT method's config dataclass of ``spec`` (None for full fine-tuning)."""
    from ptft_fast import peft

    if spec.peft == "none":
        return None
    fields = {k: v for k, v in spec.peft_config.items() if k != "peft_type"}
    return peft.CONFIGS[spec.peft](**fields)


def build(backbone: nn.Module, spec: TaskSpec, *, init_ids: list[int] | None = None) -> nn.Module:
    """The model ``ptft finetune`` trains for ``spec`` on ``backbone``: a TaskModel (cls, reg, tok,
    qa) or the LM itself (seq2seq, instruct), with the PEFT method applied (prefix and prompt
    tuning wrap the backbone; the head stays trainable) and the backbone frozen if asked.
    ``init_ids``: prompt tuning's initial token ids."""
    from ptft_fast import peft

    cfg = peft_config(spec)
    if spec.task in ("seq2seq", "instruct"):
        if spec.peft == "none":
            return backbone
        return peft.get_peft_model(backbone, spec.peft, cfg, init_ids=init_ids)
    if spec.peft in ("prefix", "prompt"):  # wrap the backbone, the head stays outside
        backbone = peft.get_peft_model(backbone, spec.peft, cfg, init_ids=init_ids)
        if spec.peft == "prompt":
            backbone.strip_outputs = True
    model = TaskModel(backbone, spec.task, len(spec.labels) if spec.labels else 1, pooling=spec.pooling)
    if spec.peft in ("lora", "adapter", "ia3"):
        peft.get_peft_model(model, spec.peft, cfg)
    elif spec.peft != "none":
        peft.mark_trainable(model)
    if spec.freeze_backbone:
        model.freeze_backbone()
    return model


def _backbone(model: nn.Module) -> nn.Module:
    return model.backbone if isinstance(model, TaskModel) else model


def layout(model: nn.Module, spec: TaskSpec, config) -> str:
    """Which layout (LAYOUTS) ``save`` writes for this model."""
    from ptft_fast.hf import peft_format

    if spec.peft == "none":
        return "head" if spec.freeze_backbone else "full"
    prefix = "backbone." if isinstance(model, TaskModel) else ""
    if spec.peft in ("lora", "ia3") and peft_format.exportable(model, config, prefix) is None:
        return "peft"
    return "native"


def save(
    model: nn.Module, out: str | Path, spec: TaskSpec, tokenizer, config, *, base_model: str, **card
) -> Path:
    """Write the fine-tuned model to ``out`` (see the module docstring); ``card``: more fields for
    task.json (metrics, ...)."""
    from ptft_fast import peft
    from ptft_fast.hf import peft_format, save_pretrained

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = layout(model, spec, config)
    if kind == "full":
        save_pretrained(_backbone(model), out)
    elif kind == "peft":
        prefix = "backbone." if isinstance(model, TaskModel) else ""
        state, adapter = peft_format.to_peft(model, config, str(Path(base_model).resolve()), prefix)
        peft_format.save(out, state, adapter)
    elif kind == "native":
        peft.save_adapter(model, out, {"peft_type": spec.peft, **spec.peft_config})
    if isinstance(model, TaskModel) and kind != "native":
        atomic_save_safetensors(out / HEAD_FILE, head_state_dict(model))
    tokenizer.save(out)
    fields = {**card, **asdict(spec), "weights": kind, "base_model": str(base_model)}
    fields["base_model_path"] = str(Path(base_model).resolve())
    atomic_write_json(out / TASK_CARD, fields, sort_keys=True)
    return out


def add_to_card(path: str | Path, **fields) -> None:
    """Add ``fields`` to the task.json of a saved model."""
    card = {**read_card(path), **fields}
    atomic_write_json(Path(path) / TASK_CARD, card, sort_keys=True)


def read_card(path: str | Path) -> dict:
    card_path = Path(path) / TASK_CARD
    if not card_path.is_file():
        raise UserInputError(f"{path}: no {TASK_CARD} (not the output of ptft finetune)")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{card_path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def base_folder(path: str | Path, card: dict, base: str | None = None) -> Path:
    """The base model folder of a fine-tuned model that holds no backbone of its own: ``base`` if
    given, else the one task.json names (as given to finetune, then resolved)."""
    candidates = [base] if base else [card.get("base_model"), card.get("base_model_path")]
    for c in candidates:
        if c and (Path(c) / "config.json").is_file():
            return Path(c)
    named = base or card.get("base_model")
    raise UserInputError(
        f"{path}: its base model {named!r} is not a model folder here (config.json missing); give it with --base"
    )


def load(path: str | Path, base: str | None = None) -> Finetuned:
    """A fine-tuned model from ``path`` (the folder ``save`` wrote), on its base model, in eval
    mode. ``base``: the base model folder, when it moved since fine-tuning."""
    from ptft_fast import peft
    from ptft_fast.data.tokenizer import PtftTokenizer
    from ptft_fast.hf import load_pretrained, peft_format

    path = Path(path)
    card = read_card(path)
    spec = TaskSpec.from_card(card)
    kind = card.get("weights") or ("full" if (path / "model.safetensors").is_file() else "native")
    if kind not in LAYOUTS:
        raise UserInputError(
            f"{path}/{TASK_CARD}: unknown weights layout {kind!r}, expected one of {LAYOUTS}"
        )
    backbone, config = load_pretrained(path if kind == "full" else base_folder(path, card, base))
    tokenizer = PtftTokenizer.from_file(path)
    model = build(backbone, spec)
    if kind == "peft":
        state, _ = peft_format.load(path)
        peft_format.from_peft(model, config, state, "backbone." if isinstance(model, TaskModel) else "")
    elif kind == "native":
        peft.load_adapter_weights(model, path)
    if isinstance(model, TaskModel) and kind != "native":
        from safetensors.torch import load_file

        load_head_state_dict(model, load_file(path / HEAD_FILE))
    return Finetuned(model.eval(), spec, tokenizer, config, card)


def merge(path: str | Path, out: str | Path, base: str | None = None) -> Finetuned:
    """Fold a LoRA / (IA)³ fine-tune into its base model and write a plain ``full`` folder to
    ``out`` (a Hugging Face model folder, plus the task head and task.json)."""
    from ptft_fast import peft

    f = load(path, base)
    if f.spec.peft not in peft.MERGEABLE:
        raise UserInputError(
            f"{path}: --peft {f.spec.peft} has nothing to merge (only {', '.join(peft.MERGEABLE)} fold into the "
            "base model's weights)"
        )
    peft.merge_and_unload(f.model)
    merged = replace(f.spec, peft="none", peft_config={})
    card = {
        k: v for k, v in f.card.items() if k not in asdict(merged) and k not in ("weights", "base_model_path")
    }
    card["merged_from"] = str(Path(path).resolve())
    save(f.model, out, merged, f.tokenizer, f.config, base_model=card.pop("base_model", str(path)), **card)
    return replace(f, spec=merged)
