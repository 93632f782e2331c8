"""Typed model configs with commented defaults, named presets and validation.

One dataclass covers the five families (``arch``): encoder-only ``bert``/``roberta``,
decoder-only ``gpt2``, encoder-decoder ``t5``/``bart``. Defaults are BERT-base; presets override
what differs. ``ModelConfig.from_name("t5-small", dropout=0.0)`` builds a preset with overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ptft_fast.errors import UserInputError

ARCHS = ("bert", "roberta", "gpt2", "t5", "bart")
# Activation names (ours) and the ones Hugging Face configs use for them.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


class ConfigError(UserInputError):
    """An invalid model config; the message names the field, the rule and the value."""


@dataclass
class ModelConfig:
    arch: str = "bert"  # one of ARCHS: picks the block layout and the HF name mapping
    vocab_size: int = 30522  # token embedding rows (= LM head outputs)
    hidden_size: int = 768  # d_model
    num_layers: int = 12  # encoder layers (decoder layers for gpt2)
    num_decoder_layers: int | None = None  # encoder-decoder only; None → num_layers
    num_heads: int = 12  # attention heads
    head_dim: int | None = None  # per-head size; None → hidden_size // num_heads (T5 d_kv may differ)
    ffn_size: int = 3072  # MLP inner size
    activation: str = "gelu"  # one of ACTIVATIONS (gelu = exact erf, gelu_tanh = GPT-2 "gelu_new")
    gated_ffn: bool = False  # T5 v1.1 gated MLP: act(x W0) * (x W1)
    max_position_embeddings: int = 512  # learned absolute positions (0 for T5's relative bias)
    type_vocab_size: int = 2  # token types (segment ids), BERT/RoBERTa only
    norm_eps: float = 1e-12  # LayerNorm / RMSNorm epsilon
    dropout: float = 0.1  # hidden/residual dropout
    attention_dropout: float = 0.1  # attention-probability dropout
    activation_dropout: float = 0.0  # dropout after the MLP activation (BART)
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None  # encoder-decoder: first decoder input (shift right)
    tie_word_embeddings: bool = True  # LM/MLM head reuses the input embedding matrix
    relative_attention_num_buckets: int = 32  # T5 relative position buckets
    relative_attention_max_distance: int = 128  # T5: distances beyond share the last bucket
    scale_embedding: bool = False  # BART: multiply token embeddings by sqrt(hidden_size)
    scale_decoder_outputs: bool = False  # T5 v1.0: decoder output * hidden_size**-0.5 before the head
    nsp_head: bool = False  # BERT pre-training: pooler + next-sentence-prediction head
    initializer_range: float = 0.02  # std of the normal init of weights
    gradient_checkpointing: bool = False  # recompute each layer in backward (memory for compute)
    varlen: bool = False  # encoder: drop padding tokens and run attention on packed sequences
    prefix_lm: bool = False  # gpt2 trained as a prefix LM: generate/ICL read the prompt bidirectionally

    def __post_init__(self) -> None:
        self.validate()

    @property
    def attn_dim(self) -> int:
        """num_heads * head_dim: width of the q/k/v projections."""
        return self.num_heads * self.resolved_head_dim

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    @property
    def is_encoder_decoder(self) -> bool:
        return self.arch in ("t5", "bart")

    def validate(self) -> None:
        """Raise ConfigError naming the first field that breaks a rule."""
        if self.arch not in ARCHS:
            raise ConfigError(f"ModelConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ModelConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.head_dim is None and self.hidden_size % self.num_heads != 0:
            raise ConfigError(
                f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads}) unless head_dim is given"
            )
        if self.head_dim is not None and self.head_dim < 1:
            raise ConfigError(f"ModelConfig.head_dim must be a positive int or None, got {self.head_dim!r}")
        if self.num_decoder_layers is not None and self.num_decoder_layers < 1:
            raise ConfigError(
                f"ModelConfig.num_decoder_layers must be >= 1 or None, got {self.num_decoder_layers}"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"ModelConfig.{name} must be in [0, 1), got {value!r}")
        if not self.norm_eps > 0.0:
            raise ConfigError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        uses_positions = self.arch != "t5"
        if uses_positions and self.max_position_embeddings < 1:
            raise ConfigError(
                f"ModelConfig.max_position_embeddings must be >= 1 for arch {self.arch!r}, "
                f"got {self.max_position_embeddings}"
            )
        if self.arch == "t5" and (
            self.relative_attention_num_buckets < 2 or self.relative_attention_max_distance < 2
        ):
            raise ConfigError(
                "ModelConfig.relative_attention_num_buckets and _max_distance must be >= 2 for T5"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(
                    f"ModelConfig.{name} must be in [0, vocab_size={self.vocab_size}) or None, got {value}"
                )
        if self.arch == "roberta" and self.pad_token_id is None:
            raise ConfigError("ModelConfig.pad_token_id is required for roberta (positions skip padding)")
        if self.is_encoder_decoder and self.decoder_start_token_id is None:
            raise ConfigError(f"ModelConfig.decoder_start_token_id is required for arch {self.arch!r}")
        if self.gated_ffn and self.arch != "t5":
            raise ConfigError(f"ModelConfig.gated_ffn is only supported for t5, got arch {self.arch!r}")
        if self.varlen and self.arch not in ("bert", "roberta"):
            raise ConfigError(
                f"ModelConfig.varlen is an encoder-only (bert/roberta) option, got arch {self.arch!r}"
            )
        if self.prefix_lm and self.arch != "gpt2":
            raise ConfigError(
                f"ModelConfig.prefix_lm is a decoder-only (gpt2) option, got arch {self.arch!r}"
            )
        if self.nsp_head and self.arch != "bert":
            raise ConfigError(f"ModelConfig.nsp_head is only supported for bert, got arch {self.arch!r}")

    def replace(self, **overrides) -> ModelConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        """A named preset (see PRESETS), with field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {unknown} in overrides for {name!r}")
        return cls(**{**PRESETS[name], **overrides})


_BERT = dict(arch="bert", pad_token_id=0)
_ROBERTA = dict(
    arch="roberta",
    vocab_size=50265,
    max_position_embeddings=514,  # 512 tokens + the pad_token_id + 1 position offset
    type_vocab_size=1,
    norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
_GPT2 = dict(
    arch="gpt2",
    vocab_size=50257,
    max_position_embeddings=1024,
    activation="gelu_tanh",
    norm_eps=1e-5,
    pad_token_id=None,
    bos_token_id=50256,
    eos_token_id=50256,
)
_T5 = dict(
    arch="t5",
    vocab_size=32128,
    hidden_size=512,
    num_layers=6,
    num_heads=8,
    head_dim=64,
    ffn_size=2048,
    activation="relu",
    max_position_embeddings=0,  # relative position bias instead
    type_vocab_size=0,
    norm_eps=1e-6,
    activation_dropout=0.1,  # T5 also drops between wi and wo
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    scale_decoder_outputs=True,
)
_T5_V11 = dict(
    _T5, activation="gelu_tanh", gated_ffn=True, tie_word_embeddings=False, scale_decoder_outputs=False
)
_BART = dict(
    arch="bart",
    vocab_size=50265,
    num_layers=6,
    max_position_embeddings=1024,
    type_vocab_size=0,
    norm_eps=1e-5,
    attention_dropout=0.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
)
_TINY = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, initializer_range=0.05)

PRESETS: dict[str, dict] = {
    "bert-tiny": dict(_BERT, num_layers=2, hidden_size=128, num_heads=2, ffn_size=512),
    "bert-mini": dict(_BERT, num_layers=4, hidden_size=256, num_heads=4, ffn_size=1024),
    "bert-base": dict(_BERT),
    "bert-large": dict(_BERT, num_layers=24, hidden_size=1024, num_heads=16, ffn_size=4096),
    "roberta-base": dict(_ROBERTA),
    "gpt2": dict(_GPT2),
    "gpt2-medium": dict(_GPT2, num_layers=24, hidden_size=1024, num_heads=16, ffn_size=4096),
    "t5-small": dict(_T5),
    "t5-base": dict(_T5, hidden_size=768, num_layers=12, num_heads=12, ffn_size=3072),
    "t5-v1_1-small": dict(_T5_V11, num_layers=8, num_heads=6, ffn_size=1024),
    "t5-v1_1-base": dict(_T5_V11, hidden_size=768, num_layers=12, num_heads=12, ffn_size=2048),
    "bart-base": dict(_BART),
    # Tiny presets: train in seconds on a CPU (tests, demos).
    "bert-tiny-cpu": dict(
        _BERT,
        **_TINY,
        vocab_size=1024,
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        ffn_size=128,
        max_position_embeddings=128,
    ),
    "roberta-tiny": dict(
        _ROBERTA,
        **_TINY,
        vocab_size=1024,
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        ffn_size=128,
        max_position_embeddings=130,
    ),
    "gpt-tiny": dict(
        _GPT2,
        **_TINY,
        vocab_size=1024,
        bos_token_id=1023,  # GPT-2's <|endoftext|> is the last id; 50256 would be outside this vocab
        eos_token_id=1023,
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        ffn_size=256,
        max_position_embeddings=128,
    ),
    "t5-tiny": dict(
        _T5, **_TINY, vocab_size=1024, num_layers=2, hidden_size=64, num_heads=2, head_dim=32, ffn_size=128
    ),
    "t5-v1_1-tiny": dict(
        _T5_V11,
        **_TINY,
        vocab_size=1024,
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        head_dim=32,
        ffn_size=128,
    ),
    "bart-tiny": dict(
        _BART,
        **_TINY,
        vocab_size=1024,
        num_layers=2,
        hidden_size=64,
        num_heads=2,
        ffn_size=128,
        max_position_embeddings=128,
    ),
}

# What each preset is for (``ptft models`` prints it next to the shape and parameter count).
PRESET_USES: dict[str, str] = {
    "bert-tiny": "BERT-Tiny shape (2 layers x 128, Turc et al. 2019): a real pre-training run on a CPU",
    "bert-mini": "BERT-Mini shape (4 x 256): longer CPU runs or a small GPU",
    "bert-base": "BERT-base (12 x 768): GPU pre-training, the reference encoder",
    "bert-large": "BERT-large (24 x 1024): several GPUs (DeepSpeed ZeRO)",
    "roberta-base": "RoBERTa-base: masked LM with byte-level BPE, on a GPU",
    "gpt2": "GPT-2 small (124M at its vocabulary): causal LM on a GPU",
    "gpt2-medium": "GPT-2 medium (24 x 1024): causal LM on a GPU",
    "t5-small": "T5 v1.0 small: span corruption on a GPU",
    "t5-base": "T5 v1.0 base: span corruption on a GPU",
    "t5-v1_1-small": "T5 v1.1 small (gated GELU MLP, untied head): span corruption on a GPU",
    "t5-v1_1-base": "T5 v1.1 base: span corruption on a GPU",
    "bart-base": "BART-base: text infilling on a GPU",
    "bert-tiny-cpu": "the default: 2 x 64, trains in seconds on a CPU (smoke runs, tests, demos)",
    "roberta-tiny": "2 x 64 RoBERTa: seconds on a CPU (smoke runs, tests)",
    "gpt-tiny": "2 x 64 GPT-2: seconds on a CPU (smoke runs, tests)",
    "t5-tiny": "2 x 64 T5 v1.0: seconds on a CPU (smoke runs, tests)",
    "t5-v1_1-tiny": "2 x 64 T5 v1.1: seconds on a CPU (smoke runs, tests)",
    "bart-tiny": "2 x 64 BART: seconds on a CPU (smoke runs, tests)",
}
