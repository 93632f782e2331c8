"""The run's model config: a preset (fitted to the run's tokenizer) or a config file / HF folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ptft_fast.data.tokenizer import PtftTokenizer
from ptft_fast.models.config import PRESETS, ModelConfig
from ptft_fast.train.config import DEFAULT_TOKENIZER, OBJECTIVE_ARCHS, TrainConfig, TrainConfigError


def base_model_config(model: str) -> ModelConfig:
    """ModelConfig of a preset name, a ptft/HF config.json file, or an HF model folder."""
    if model in PRESETS:
        return ModelConfig.from_name(model)
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"model={model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a config.json / HF folder"
        )
    raw = json.loads(path.read_text())
    ours = {f.name for f in dataclasses.fields(ModelConfig)}
    if "arch" in raw and set(raw) <= ours:
        return ModelConfig(**raw)
    from ptft_fast.hf.configs import from_hf_config

    return from_hf_config(raw)


def tokenizer_kind(cfg: TrainConfig) -> str:
    """Tokenizer trained for the run: the family's kind (unigram for T5 span corruption); the model,
    objective and sequence lengths are checked on the way, before any work."""
    base = base_model_config(cfg.model)
    check_objective(cfg, base.arch)
    check_seq_len(cfg, base)
    return DEFAULT_TOKENIZER[base.arch]


def check_objective(cfg: TrainConfig, arch: str) -> None:
    if arch not in OBJECTIVE_ARCHS[cfg.objective]:
        raise TrainConfigError(
            f"objective={cfg.objective!r} trains {'/'.join(OBJECTIVE_ARCHS[cfg.objective])} models, "
            f"but model={cfg.model!r} is arch {arch!r} (contradictory options)"
        )


def model_config(cfg: TrainConfig, tok: PtftTokenizer) -> ModelConfig:
    """The run's ModelConfig: presets take the tokenizer's vocabulary size and special ids."""
    base = base_model_config(cfg.model)
    check_objective(cfg, base.arch)
    over: dict = {"gradient_checkpointing": cfg.gradient_checkpointing}
    if base.arch == "gpt2":  # recorded in config.json: generate / icl then read the prompt as the prefix
        over["prefix_lm"] = cfg.objective == "prefix-lm"
    if cfg.objective == "mlm+nsp":
        over["nsp_head"] = True  # BERT's pooler + next-sentence classifier
    if cfg.model in PRESETS:
        over.update(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
        if base.arch in ("gpt2", "roberta", "bart"):
            over.update(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
        if base.arch == "t5":
            over.update(eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id)
        if base.arch == "bart":
            over.update(decoder_start_token_id=tok.eos_id)
    elif base.vocab_size < tok.vocab_size:
        raise TrainConfigError(
            f"model vocab_size ({base.vocab_size}) is smaller than the tokenizer's ({tok.vocab_size})"
        )
    mc = base.replace(**over)
    check_seq_len(cfg, mc)
    return mc


def check_seq_len(cfg: TrainConfig, mc: ModelConfig) -> None:
    """The run's sequence lengths fit the model's learned positions (T5's relative ones: any)."""
    longest = max(cfg.seq_len, cfg.long_seq_len)
    limit = mc.max_position_embeddings - (2 if mc.arch == "roberta" else 0)
    if mc.arch != "t5" and longest > limit:
        raise TrainConfigError(
            f"seq_len/long_seq_len ({longest}) exceeds the model's max_position_embeddings ({limit})"
        )
