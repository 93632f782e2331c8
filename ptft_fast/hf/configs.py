"""Hugging Face config.json ↔ ModelConfig, one pair of functions per family."""

from __future__ import annotations

import warnings

from ptft_fast.errors import UserInputError
from ptft_fast.models.config import ModelConfig

# HF architecture name → our arch.
ARCHITECTURES = {
    "BertForMaskedLM": "bert",
    "BertForPreTraining": "bert",
    "RobertaForMaskedLM": "roberta",
    "GPT2LMHeadModel": "gpt2",
    "T5ForConditionalGeneration": "t5",
    "BartForConditionalGeneration": "bart",
}
_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


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


class UnsupportedCheckpointError(UserInputError):
    """A Hugging Face checkpoint ptft_fast cannot represent exactly; the message says why."""


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


def _act(name: str, where: str) -> str:
    if name not in _ACT_FROM_HF:
        raise UnsupportedCheckpointError(
            f"{where}: activation {name!r} is not supported; known: {sorted(_ACT_FROM_HF)}"
        )
    return _ACT_FROM_HF[name]


def _require(hf: dict, key: str, allowed, where: str) -> None:
    if key in hf and hf[key] not in allowed:
        raise UnsupportedCheckpointError(
            f"{where}: config {key}={hf[key]!r} is not supported (supported: {allowed})"
        )


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


def from_hf_config(hf: dict, **overrides) -> ModelConfig:
    """Our ModelConfig for an HF config.json dict (architecture picked from ``architectures``)."""
    name, arch = architecture_of(hf)
    where = f"{name} config"
    if arch in ("bert", "roberta"):
        _require(hf, "position_embedding_type", ("absolute",), where)
        _require(hf, "is_decoder", (False,), where)
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            ffn_size=hf["intermediate_size"],
            activation=_act(hf.get("hidden_act", "gelu"), where),
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=hf.get("pad_token_id", 0 if arch == "bert" else 1),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
            nsp_head=name == "BertForPreTraining",
        )
    elif arch == "gpt2":
        _require(hf, "scale_attn_weights", (True,), where)
        _require(hf, "scale_attn_by_inverse_layer_idx", (False,), where)
        _require(hf, "add_cross_attention", (False,), where)
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["n_embd"],
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            ffn_size=hf.get("n_inner") or 4 * hf["n_embd"],
            activation=_act(hf.get("activation_function", "gelu_new"), where),
            max_position_embeddings=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=hf.get("resid_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            pad_token_id=hf.get("pad_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
        )
    elif arch == "t5":
        proj = hf.get("feed_forward_proj", "relu")
        gated = proj.startswith("gated-")
        act = "gelu_new" if proj == "gated-gelu" else proj.removeprefix("gated-")
        tied = hf.get("tie_word_embeddings", True) is not False
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["d_model"],
            num_layers=hf["num_layers"],
            num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
            num_heads=hf["num_heads"],
            head_dim=hf["d_kv"],
            ffn_size=hf["d_ff"],
            activation=_act(act, where),
            gated_ffn=gated,
            max_position_embeddings=0,
            type_vocab_size=0,
            norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            dropout=hf.get("dropout_rate", 0.1),
            attention_dropout=hf.get("dropout_rate", 0.1),
            activation_dropout=hf.get("dropout_rate", 0.1),  # T5 drops inside the MLP too
            pad_token_id=hf.get("pad_token_id", 0),
            eos_token_id=hf.get("eos_token_id", 1),
            decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
            tie_word_embeddings=tied,
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            # transformers >= 5 records the v1.0 output scaling explicitly; older configs imply it by tying
            scale_decoder_outputs=hf.get("scale_decoder_outputs", tied),
        )
    else:  # bart
        for enc, dec in (
            ("encoder_attention_heads", "decoder_attention_heads"),
            ("encoder_ffn_dim", "decoder_ffn_dim"),
        ):
            if hf.get(enc) != hf.get(dec):
                raise UnsupportedCheckpointError(
                    f"{where}: {enc}={hf.get(enc)} != {dec}={hf.get(dec)} is not supported"
                )
        _require(hf, "normalize_before", (False,), where)
        _require(hf, "add_final_layer_norm", (False,), where)
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["d_model"],
            num_layers=hf["encoder_layers"],
            num_decoder_layers=hf["decoder_layers"],
            num_heads=hf["encoder_attention_heads"],
            ffn_size=hf["encoder_ffn_dim"],
            activation=_act(hf.get("activation_function", "gelu"), where),
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=0,
            norm_eps=1e-5,  # BART's LayerNorms use the torch default
            dropout=hf.get("dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.0),
            activation_dropout=hf.get("activation_dropout", 0.0),
            pad_token_id=hf.get("pad_token_id", 1),
            bos_token_id=hf.get("bos_token_id", 0),
            eos_token_id=hf.get("eos_token_id", 2),
            decoder_start_token_id=hf.get("decoder_start_token_id", 2),
            scale_embedding=bool(hf.get("scale_embedding", False)),
            initializer_range=hf.get("init_std", 0.02),
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
        )
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
    act = _ACT_TO_HF[config.activation]
    common = dict(
        vocab_size=config.vocab_size,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    if arch in ("bert", "roberta"):
        name = (
            "BertForPreTraining"
            if config.nsp_head
            else ("BertForMaskedLM" if arch == "bert" else "RobertaForMaskedLM")
        )
        return dict(
            common,
            architectures=[name],
            model_type=arch,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.ffn_size,
            hidden_act=act,
            max_position_embeddings=config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.norm_eps,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.attention_dropout,
            initializer_range=config.initializer_range,
            position_embedding_type="absolute",
        )
    if arch == "gpt2":
        return dict(
            common,
            architectures=["GPT2LMHeadModel"],
            model_type="gpt2",
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.ffn_size,
            activation_function=act,
            n_positions=config.max_position_embeddings,
            layer_norm_epsilon=config.norm_eps,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.attention_dropout,
            initializer_range=config.initializer_range,
        )
    if arch == "t5":
        if config.gated_ffn:
            proj = "gated-gelu" if config.activation == "gelu_tanh" else f"gated-{act}"
        else:
            proj = act
        return dict(
            common,
            architectures=["T5ForConditionalGeneration"],
            model_type="t5",
            d_model=config.hidden_size,
            d_kv=config.resolved_head_dim,
            d_ff=config.ffn_size,
            num_layers=config.num_layers,
            num_decoder_layers=config.decoder_layers,
            num_heads=config.num_heads,
            relative_attention_num_buckets=config.relative_attention_num_buckets,
            relative_attention_max_distance=config.relative_attention_max_distance,
            dropout_rate=config.dropout,
            layer_norm_epsilon=config.norm_eps,
            feed_forward_proj=proj,
            decoder_start_token_id=config.decoder_start_token_id,
            scale_decoder_outputs=config.scale_decoder_outputs,
            is_encoder_decoder=True,
        )
    if config.norm_eps != 1e-5:
        raise UnsupportedCheckpointError(
            f"bart: HF BART hard-codes LayerNorm eps 1e-5, got norm_eps={config.norm_eps}"
        )
    return dict(
        common,
        architectures=["BartForConditionalGeneration"],
        model_type="bart",
        d_model=config.hidden_size,
        encoder_layers=config.num_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.ffn_size,
        decoder_ffn_dim=config.ffn_size,
        activation_function=act,
        max_position_embeddings=config.max_position_embeddings,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        scale_embedding=config.scale_embedding,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=config.eos_token_id,
        init_std=config.initializer_range,
        is_encoder_decoder=True,
    )
