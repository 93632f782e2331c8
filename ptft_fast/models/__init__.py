"""ptft_fast.models — lean BERT/RoBERTa, GPT-2, T5 and BART on ptft_fast ops.

``build_model(config)`` picks the model class from ``config.arch``; ``from_name("gpt2", ...)``
builds a named preset (see ``ptft_fast.models.config.PRESETS``) with field overrides.
"""

from __future__ import annotations

from torch import nn

from ptft_fast.models.config import ARCHS, PRESETS, ConfigError, ModelConfig
from ptft_fast.models.decoder import DecoderForCausalLM
from ptft_fast.models.encoder import Encoder, EncoderForMaskedLM
from ptft_fast.models.encoder_decoder import EncoderDecoderForConditionalGeneration
from ptft_fast.models.state import KVCache, ModelOutput, Packing

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "bert": EncoderForMaskedLM,
    "roberta": EncoderForMaskedLM,
    "gpt2": DecoderForCausalLM,
    "t5": EncoderDecoderForConditionalGeneration,
    "bart": EncoderDecoderForConditionalGeneration,
}


def build_model(config: ModelConfig) -> nn.Module:
    """A randomly initialized model for ``config`` (class chosen by ``config.arch``)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model: config must be a ModelConfig, got {type(config).__name__}")
    config.validate()
    return MODEL_CLASSES[config.arch](config)


def from_name(name: str, **overrides) -> nn.Module:
    """A randomly initialized model from a named preset, e.g. ``from_name("bert-tiny-cpu")``."""
    return build_model(ModelConfig.from_name(name, **overrides))


__all__ = [
    "ARCHS",
    "PRESETS",
    "ConfigError",
    "DecoderForCausalLM",
    "Encoder",
    "EncoderDecoderForConditionalGeneration",
    "EncoderForMaskedLM",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "Packing",
    "build_model",
    "from_name",
]
