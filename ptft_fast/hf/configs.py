"""Hugging Face config.json ↔ ModelConfig: one table per family drives both directions.

Each family lists its :class:`Key` pairs (a ModelConfig field and the config.json key that holds
it, the value transformers assumes when the key is missing, and a conversion each way where the
two spell a value differently), the config.json keys it writes as constants and refuses other
values of, the keys that must equal another key, and the ModelConfig fields it always has. The
few values that depend on two keys at once (T5's ``feed_forward_proj``, GPT-2's ``n_inner``)
are one small function per direction. ``from_hf_config(to_hf_config(c))`` gives ``c`` back for
every preset (tests/hf/test_hf_configs.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from ptft_fast.errors import UserInputError
from ptft_fast.models.config import ModelConfig


class UnsupportedCheckpointError(UserInputError):
    """A Hugging Face checkpoint ptft_fast cannot represent exactly; the message says why."""


REQUIRED = object()  # Key.default: config.json must hold the key

_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _act_in(name: str, where: str) -> str:
    if name not in _ACT_FROM_HF:
        raise UnsupportedCheckpointError(
            f"{where}: activation {name!r} is not supported; known: {sorted(_ACT_FROM_HF)}"
        )
    return _ACT_FROM_HF[name]


def _act_out(name: str) -> str:
    return _ACT_TO_HF[name]


def _tied_in(value, where: str) -> bool:
    return value is not False  # transformers ties unless the config says false


@dataclass(frozen=True)
class Key:
    """ModelConfig field ``ours`` ↔ config.json key ``hf``; ``default``: transformers' value when
    the key is missing (REQUIRED: the key must be there); ``read(value, where)`` / ``write(value)``
    convert where the two spell it differently."""

    ours: str
    hf: str
    default: object = None
    read: Callable | None = None
    write: Callable | None = None


@dataclass(frozen=True)
class Family:
    """How one family's ModelConfig and config.json correspond (see the module docstring)."""

    model_type: str
    keys: tuple[Key, ...]
    architectures: tuple[str, ...]  # HF class names this family loads; the first is written
    constants: dict = field(default_factory=dict)  # config.json key → the only value supported
    equal: dict = field(default_factory=dict)  # config.json key → the key it must equal (written too)
    fixed: dict = field(default_factory=dict)  # ModelConfig fields the family always has
    read_extra: Callable[[dict, dict, str], dict] | None = None  # (hf, fields, where) → more fields
    write_extra: Callable[[ModelConfig], dict] | None = None  # config → more config.json keys


_IDS = (
    Key("pad_token_id", "pad_token_id"),
    Key("bos_token_id", "bos_token_id"),
    Key("eos_token_id", "eos_token_id"),
)


def _bert_keys(pad: int) -> tuple[Key, ...]:
    return (
        Key("hidden_size", "hidden_size", REQUIRED),
        Key("num_layers", "num_hidden_layers", REQUIRED),
        Key("num_heads", "num_attention_heads", REQUIRED),
        Key("ffn_size", "intermediate_size", REQUIRED),
        Key("activation", "hidden_act", "gelu", _act_in, _act_out),
        Key("max_position_embeddings", "max_position_embeddings", REQUIRED),
        Key("type_vocab_size", "type_vocab_size", 2),
        Key("norm_eps", "layer_norm_eps", 1e-12),
        Key("dropout", "hidden_dropout_prob", 0.1),
        Key("attention_dropout", "attention_probs_dropout_prob", 0.1),
        Key("pad_token_id", "pad_token_id", pad),
        *_IDS[1:],
        Key("initializer_range", "initializer_range", 0.02),
        Key("tie_word_embeddings", "tie_word_embeddings", True, _tied_in),
    )


# config.json key that records a GPT-2 trained as a prefix LM (ptft_fast's own: transformers keeps it
# as an attribute and ignores it, so its GPT2LMHeadModel attends causally over the prompt too).
PREFIX_LM_KEY = "prefix_lm"


def _gpt2_in(hf: dict, fields: dict, where: str) -> dict:
    return {
        "ffn_size": hf.get("n_inner") or 4 * hf["n_embd"],  # n_inner null means 4 × width
        "prefix_lm": hf.get(PREFIX_LM_KEY, False) is True,
    }


def _gpt2_out(config: ModelConfig) -> dict:
    # one dropout for both; the prefix-LM flag only where it is set (plain GPT-2 configs stay as they were)
    return {"embd_pdrop": config.dropout, **({PREFIX_LM_KEY: True} if config.prefix_lm else {})}


def _t5_in(hf: dict, fields: dict, where: str) -> dict:
    proj = hf.get("feed_forward_proj", "relu")
    act = "gelu_new" if proj == "gated-gelu" else proj.removeprefix("gated-")
    return {
        "gated_ffn": proj.startswith("gated-"),
        "activation": _act_in(act, where),
        "attention_dropout": fields["dropout"],  # one dropout_rate for every T5 dropout
        "activation_dropout": fields["dropout"],
        "num_decoder_layers": hf.get("num_decoder_layers") or fields["num_layers"],
        "decoder_start_token_id": hf.get("decoder_start_token_id", fields["pad_token_id"]),
        # transformers >= 5 records the v1.0 output scaling explicitly; older configs imply it by tying
        "scale_decoder_outputs": hf.get("scale_decoder_outputs", fields["tie_word_embeddings"]),
    }


def _t5_out(config: ModelConfig) -> dict:
    act = _act_out(config.activation)
    gated = "gated-gelu" if config.activation == "gelu_tanh" else f"gated-{act}"
    return {
        "feed_forward_proj": gated if config.gated_ffn else act,
        "d_kv": config.resolved_head_dim,
        "num_decoder_layers": config.decoder_layers,
        "decoder_start_token_id": config.decoder_start_token_id,
        "scale_decoder_outputs": config.scale_decoder_outputs,
    }


def _bart_out(config: ModelConfig) -> dict:
    if config.norm_eps != 1e-5:
        raise UnsupportedCheckpointError(
            f"bart: HF BART hard-codes LayerNorm eps 1e-5, got norm_eps={config.norm_eps}"
        )
    return {"forced_eos_token_id": config.eos_token_id, "decoder_layers": config.decoder_layers}


FAMILIES: dict[str, Family] = {
    "bert": Family(
        "bert",
        _bert_keys(pad=0),
        ("BertForMaskedLM", "BertForPreTraining"),
        constants={"position_embedding_type": "absolute", "is_decoder": False},
    ),
    "roberta": Family(
        "roberta",
        _bert_keys(pad=1),
        ("RobertaForMaskedLM",),
        constants={"position_embedding_type": "absolute", "is_decoder": False},
    ),
    "gpt2": Family(
        "gpt2",
        (
            Key("hidden_size", "n_embd", REQUIRED),
            Key("num_layers", "n_layer", REQUIRED),
            Key("num_heads", "n_head", REQUIRED),
            Key("ffn_size", "n_inner"),  # read by _gpt2_in
            Key("activation", "activation_function", "gelu_new", _act_in, _act_out),
            Key("max_position_embeddings", "n_positions", REQUIRED),
            Key("norm_eps", "layer_norm_epsilon", 1e-5),
            Key("dropout", "resid_pdrop", 0.1),
            Key("attention_dropout", "attn_pdrop", 0.1),
            *_IDS,
            Key("initializer_range", "initializer_range", 0.02),
            Key("tie_word_embeddings", "tie_word_embeddings", True, _tied_in),
        ),
        ("GPT2LMHeadModel",),
        constants={
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "add_cross_attention": False,
        },
        read_extra=_gpt2_in,
        write_extra=_gpt2_out,
    ),
    "t5": Family(
        "t5",
        (
            Key("hidden_size", "d_model", REQUIRED),
            Key("num_layers", "num_layers", REQUIRED),
            Key("num_heads", "num_heads", REQUIRED),
            Key("head_dim", "d_kv", REQUIRED),  # written resolved (head_dim None → width / heads) by _t5_out
            Key("ffn_size", "d_ff", REQUIRED),
            Key("norm_eps", "layer_norm_epsilon", 1e-6),
            Key("dropout", "dropout_rate", 0.1),
            Key("pad_token_id", "pad_token_id", 0),
            Key("eos_token_id", "eos_token_id", 1),
            Key("tie_word_embeddings", "tie_word_embeddings", True, _tied_in),
            Key("relative_attention_num_buckets", "relative_attention_num_buckets", 32),
            Key("relative_attention_max_distance", "relative_attention_max_distance", 128),
            # not a T5 key (T5 scales its init by initializer_factor): carried so that a run's
            # config comes back whole; transformers keeps and ignores it
            Key("initializer_range", "initializer_range", 0.02),
        ),
        ("T5ForConditionalGeneration",),
        constants={"is_encoder_decoder": True},
        fixed={"max_position_embeddings": 0, "type_vocab_size": 0},
        read_extra=_t5_in,
        write_extra=_t5_out,
    ),
    "bart": Family(
        "bart",
        (
            Key("hidden_size", "d_model", REQUIRED),
            Key("num_layers", "encoder_layers", REQUIRED),
            Key("num_decoder_layers", "decoder_layers", REQUIRED),  # written resolved by _bart_out
            Key("num_heads", "encoder_attention_heads", REQUIRED),
            Key("ffn_size", "encoder_ffn_dim", REQUIRED),
            Key("activation", "activation_function", "gelu", _act_in, _act_out),
            Key("max_position_embeddings", "max_position_embeddings", REQUIRED),
            Key("dropout", "dropout", 0.1),
            Key("attention_dropout", "attention_dropout", 0.0),
            Key("activation_dropout", "activation_dropout", 0.0),
            Key("pad_token_id", "pad_token_id", 1),
            Key("bos_token_id", "bos_token_id", 0),
            Key("eos_token_id", "eos_token_id", 2),
            Key("decoder_start_token_id", "decoder_start_token_id", 2),
            Key("scale_embedding", "scale_embedding", False, lambda v, where: bool(v)),
            Key("initializer_range", "init_std", 0.02),
            Key("tie_word_embeddings", "tie_word_embeddings", True, _tied_in),
        ),
        ("BartForConditionalGeneration",),
        constants={"normalize_before": False, "add_final_layer_norm": False, "is_encoder_decoder": True},
        equal={"decoder_attention_heads": "encoder_attention_heads", "decoder_ffn_dim": "encoder_ffn_dim"},
        fixed={"type_vocab_size": 0, "norm_eps": 1e-5},  # BART's LayerNorms use the torch default
        write_extra=_bart_out,
    ),
}
# HF architecture name → our arch.
ARCHITECTURES = {name: arch for arch, family in FAMILIES.items() for name in family.architectures}

# Special-token ids the forward pass reads, per family: outside the vocabulary they are refused.
# The others (bos/eos, GPT-2's pad) only steer generation: outside the vocabulary the model can
# never produce them, so they load as None with a warning, as transformers loads them.
_COMPUTED_IDS = {
    "bert": ("pad_token_id",),  # embedding padding_idx
    "roberta": ("pad_token_id",),  # padding_idx and position ids
    "t5": ("pad_token_id", "decoder_start_token_id"),  # decoder inputs shifted from the labels
    "bart": ("pad_token_id", "decoder_start_token_id"),
    "gpt2": (),
}
_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _special_ids(fields: dict, arch: str, where: str) -> dict:
    """``fields`` with special-token ids outside [0, vocab_size) dropped (warning) or refused."""
    vocab = fields["vocab_size"]
    out = dict(fields)
    for name in _ID_FIELDS:
        value = out.get(name)
        if isinstance(value, list):  # several eos ids (generation stops on any): ptft_fast keeps one
            inside = [v for v in value if isinstance(v, int) and 0 <= v < vocab]
            warnings.warn(
                f"{where}: {name}={value} is a list; using {inside[0] if inside else None}", stacklevel=3
            )
            value = out[name] = inside[0] if inside else None
        if value is None or 0 <= value < vocab:
            continue
        if name in _COMPUTED_IDS[arch]:
            raise UnsupportedCheckpointError(
                f"{where}: {name}={value} is outside the vocabulary (vocab_size={vocab}) and the "
                f"{arch} forward pass looks it up"
            )
        warnings.warn(
            f"{where}: {name}={value} is outside the vocabulary (vocab_size={vocab}); loaded as None "
            "(the model can never produce that id)",
            stacklevel=3,
        )
        out[name] = None
    return out


def architecture_of(hf: dict) -> tuple[str, str]:
    """(HF architecture name, our arch) of a config.json dict, or a clear error."""
    archs = hf.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    if not known:
        raise UnsupportedCheckpointError(
            f"unsupported architecture(s) {archs or '(none listed)'} (model_type={hf.get('model_type')!r}); "
            f"ptft_fast loads: {sorted(ARCHITECTURES)}"
        )
    return known[0], ARCHITECTURES[known[0]]


def _check_constants(family: Family, hf: dict, where: str) -> None:
    for key, value in family.constants.items():
        if key in hf and hf[key] != value:
            raise UnsupportedCheckpointError(
                f"{where}: config {key}={hf[key]!r} is not supported (supported: {value!r})"
            )
    for key, other in family.equal.items():
        if hf.get(key) != hf.get(other):
            raise UnsupportedCheckpointError(
                f"{where}: {other}={hf.get(other)} != {key}={hf.get(key)} is not supported"
            )


def from_hf_config(hf: dict, **overrides) -> ModelConfig:
    """Our ModelConfig for an HF config.json dict (architecture picked from ``architectures``)."""
    name, arch = architecture_of(hf)
    family, where = FAMILIES[arch], f"{name} config"
    _check_constants(family, hf, where)
    fields: dict = {"vocab_size": hf["vocab_size"], **family.fixed}
    for key in family.keys:
        if key.hf not in hf and key.default is REQUIRED:
            raise UnsupportedCheckpointError(f"{where}: config.json has no {key.hf!r}")
        value = hf.get(key.hf, key.default)
        fields[key.ours] = key.read(value, where) if key.read is not None else value
    if family.read_extra is not None:
        fields.update(family.read_extra(hf, fields, where))
    if arch == "bert":
        fields["nsp_head"] = name == "BertForPreTraining"
    return ModelConfig(arch=arch, **{**_special_ids(fields, arch, where), **overrides})


def to_hf_config(config: ModelConfig) -> dict:
    """An HF config.json dict that transformers loads into the matching *For* class."""
    arch = config.arch
    if (
        arch != "t5"
        and config.head_dim is not None
        and config.head_dim * config.num_heads != config.hidden_size
    ):
        raise UnsupportedCheckpointError(
            f"{arch}: HF requires head_dim * num_heads == hidden_size, got head_dim={config.head_dim}"
        )
    family = FAMILIES[arch]
    name = family.architectures[1 if config.nsp_head and arch == "bert" else 0]  # BertForPreTraining
    hf: dict = {"architectures": [name], "model_type": family.model_type, "vocab_size": config.vocab_size}
    for key in family.keys:
        value = getattr(config, key.ours)
        hf[key.hf] = key.write(value) if key.write is not None else value
    hf.update(family.constants)
    hf.update({key: hf[other] for key, other in family.equal.items()})
    if family.write_extra is not None:
        hf.update(family.write_extra(config))
    return hf
