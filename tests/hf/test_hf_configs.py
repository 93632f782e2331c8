"""hf.configs: one table per family drives config.json ↔ ModelConfig both ways.

Round trip over every preset (and variants that exercise the derived keys), and, independently,
transformers' own config classes reading what we write: every field we map must come back from
transformers' attribute of the same meaning.
"""

from __future__ import annotations

import dataclasses

import pytest
from installed import import_or_skip

from ptft_fast.hf.configs import FAMILIES, UnsupportedCheckpointError, from_hf_config, to_hf_config
from ptft_fast.models.config import PRESETS, ModelConfig

transformers = import_or_skip("transformers")

RUNTIME = {"gradient_checkpointing", "varlen"}  # how to run, not what the model is: not in config.json


def canonical(config: ModelConfig) -> dict:
    """The model ``config`` describes: unset head_dim / num_decoder_layers resolved, runtime flags
    dropped, fields the family does not have (HF carries no value for them) set to what the
    family's reader gives."""
    out = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME}
    out["head_dim"] = config.resolved_head_dim if config.arch == "t5" else config.head_dim
    out["num_decoder_layers"] = config.decoder_layers if config.is_encoder_decoder else None
    return out


def variants() -> list[ModelConfig]:
    configs = [ModelConfig.from_name(name) for name in sorted(PRESETS)]
    configs += [
        ModelConfig.from_name("t5-tiny", gated_ffn=True, activation="gelu_tanh", tie_word_embeddings=False),
        ModelConfig.from_name("t5-tiny", head_dim=24, num_decoder_layers=3),
        ModelConfig.from_name("gpt-tiny", activation="relu", tie_word_embeddings=False),
        ModelConfig.from_name("bert-tiny-cpu", nsp_head=True, type_vocab_size=3),
        ModelConfig.from_name("bart-tiny", scale_embedding=True, num_decoder_layers=3),
    ]
    # every mapped number distinct, so that two keys swapped in a table cannot pass
    distinct = dict(dropout=0.11, attention_dropout=0.13, initializer_range=0.031)
    configs += [
        ModelConfig.from_name("bert-tiny-cpu", **distinct, norm_eps=1e-7, type_vocab_size=3),
        ModelConfig.from_name("roberta-tiny", **distinct, norm_eps=1e-6),
        ModelConfig.from_name("gpt-tiny", **distinct, norm_eps=1e-4, ffn_size=96),
        ModelConfig.from_name("bart-tiny", **distinct, activation_dropout=0.17),
        ModelConfig.from_name("t5-tiny", dropout=0.11, attention_dropout=0.11, activation_dropout=0.11,
                              norm_eps=1e-5, relative_attention_num_buckets=16,
                              relative_attention_max_distance=64),
    ]  # fmt: skip
    return configs


def _fields_that_matter(config: ModelConfig) -> set[str]:
    """ModelConfig fields the family maps (a family without a field keeps ModelConfig's default)."""
    family = FAMILIES[config.arch]
    mapped = {key.ours for key in family.keys} | set(family.fixed)
    return mapped | {"vocab_size", "arch"}


@pytest.mark.parametrize("config", variants(), ids=lambda c: f"{c.arch}-{c.hidden_size}x{c.num_layers}")
def test_round_trip_gives_the_config_back(config):
    back = from_hf_config(to_hf_config(config))
    want, got = canonical(config), canonical(back)
    differ = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not differ, f"{config.arch}: (ours, after the round trip) {differ}"


@pytest.mark.parametrize("config", variants(), ids=lambda c: f"{c.arch}-{c.hidden_size}x{c.num_layers}")
def test_transformers_reads_what_we_write(config):
    """transformers' config class built from our config.json has the same shape: an independent
    reader of the same dict."""
    hf = to_hf_config(config)
    cls = transformers.AutoConfig.for_model(hf["model_type"]).__class__
    theirs = cls(**{k: v for k, v in hf.items() if k not in ("model_type",)})
    width = getattr(theirs, "hidden_size", None) or theirs.d_model
    assert width == config.hidden_size
    assert theirs.vocab_size == config.vocab_size
    assert theirs.num_hidden_layers == config.num_layers
    assert theirs.num_attention_heads == config.num_heads
    if config.arch == "t5":  # transformers >= 5 ties T5 always and reads the flag as the output scaling
        assert theirs.scale_decoder_outputs == config.scale_decoder_outputs
    else:
        assert theirs.tie_word_embeddings == config.tie_word_embeddings
    if config.arch == "t5":
        assert theirs.d_kv == config.resolved_head_dim and theirs.is_gated_act == config.gated_ffn
        assert theirs.num_decoder_layers == config.decoder_layers
    if config.arch == "bart":
        assert theirs.decoder_layers == config.decoder_layers
        assert theirs.decoder_attention_heads == config.num_heads
    if config.arch == "gpt2":
        assert theirs.n_inner == config.ffn_size


def test_every_family_field_is_a_model_config_field():
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    for arch, family in FAMILIES.items():
        unknown = ({k.ours for k in family.keys} | set(family.fixed)) - names
        assert not unknown, f"{arch}: {unknown}"


@pytest.mark.parametrize(
    ("arch", "key", "value", "words"),
    [
        ("bert", "position_embedding_type", "relative_key", "position_embedding_type"),
        ("gpt2", "scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
        ("bart", "decoder_attention_heads", 3, "decoder_attention_heads"),
        ("bart", "normalize_before", True, "normalize_before"),
    ],
)
def test_settings_ptft_cannot_represent_are_refused_by_name(arch, key, value, words):
    preset = {"bert": "bert-tiny-cpu", "gpt2": "gpt-tiny", "bart": "bart-tiny"}[arch]
    hf = {**to_hf_config(ModelConfig.from_name(preset)), key: value}
    with pytest.raises(UnsupportedCheckpointError, match=words):
        from_hf_config(hf)


def test_missing_required_key_is_named():
    hf = to_hf_config(ModelConfig.from_name("gpt-tiny"))
    del hf["n_embd"]
    with pytest.raises(UnsupportedCheckpointError, match="n_embd"):
        from_hf_config(hf)


def test_gpt2_null_n_inner_means_four_times_the_width():
    hf = {**to_hf_config(ModelConfig.from_name("gpt-tiny")), "n_inner": None}
    assert from_hf_config(hf).ffn_size == 4 * hf["n_embd"]
