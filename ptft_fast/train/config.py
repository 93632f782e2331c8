"""``TrainConfig``: every knob of a pre-training run, typed, with commented defaults.

Sources merge in this order: defaults → ``--config run.yaml`` → ``--set key=value`` → CLI flags.
Unknown keys and contradictory settings raise :class:`TrainConfigError` naming them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

OBJECTIVES = ("mlm", "clm", "prefix-lm", "span", "infill", "electra")
SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
PRECISIONS = ("fp32", "bf16", "fp16")
# Which model family each objective trains, and the tokenizer kind it trains by default.
OBJECTIVE_ARCHS = {
    "mlm": ("bert", "roberta"),
    "electra": ("bert", "roberta"),
    "clm": ("gpt2",),
    "prefix-lm": ("gpt2",),
    "span": ("t5",),
    "infill": ("bart",),
}
DEFAULT_TOKENIZER = {"bert": "wordpiece", "roberta": "bpe", "gpt2": "bpe", "t5": "unigram", "bart": "bpe"}


class TrainConfigError(ValueError):
    """A bad run configuration; the message names the key(s), the rule and the value."""


@dataclass
class TrainConfig:
    # --- what to train
    model: str = "bert-tiny-cpu"  # preset name (ptft_fast.models.PRESETS) or a config.json / HF dir
    objective: str = "mlm"  # one of OBJECTIVES
    data: str | None = None  # shard folder, corpus.jsonl / .txt files; None = embedded pydoc corpus
    out: str = "runs/pretrain"  # run folder: metrics, checkpoints, final model
    seed: int = 0  # seeds python, numpy, torch and the data order
    # --- data and tokenizer
    vocab_size: int = 1024  # tokenizer trained on the corpus when the run has none cached
    seq_len: int = 128  # tokens per sequence (encoder length for span/infill)
    long_seq_len: int = 0  # >0: switch to this length for the last part of training (BERT: 512)
    long_seq_len_start: float = 0.9  # fraction of max_steps after which long_seq_len is used
    eval_fraction: float = 0.05  # documents held out for evaluation (text inputs only)
    mlm_probability: float = 0.3  # MLM / ELECTRA: fraction of tokens chosen (BERT: 0.15; 0.3 and 0.4
    # gave +4-7 points on the fine-tuned embedded task after 2,000 bert-tiny steps: README)
    noise_density: float = 0.15  # T5 span corruption
    mean_noise_span_length: float = 3.0  # T5 span corruption
    infill_ratio: float = 0.3  # BART text infilling
    electra_disc_weight: float = 50.0  # ELECTRA: λ on the discriminator loss
    # --- optimization
    max_steps: int = 300  # optimizer steps
    micro_batch_size: int = 16  # sequences per forward/backward
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # floor of linear/cosine decay, as a fraction of lr
    warmup_steps: int = -1  # linear warm-up from 0; -1 = 10% of max_steps
    schedule: str = "cosine"  # one of SCHEDULES (decay after warm-up)
    weight_decay: float = 0.01  # AdamW, not applied to biases and norm weights
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0  # clip the global grad norm; 0 = off
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + dynamic loss scaling)
    init_loss_scale: float = 2.0**16  # fp16 only
    loss_scale_window: int = 1000  # fp16: good steps before the scale doubles
    gradient_checkpointing: bool = False  # recompute layers in backward (memory for compute)
    max_bad_steps: int = 5  # NaN/inf: skip the step with a warning; stop after this many in a row
    max_time_s: float = 0.0  # >0: stop (and save) after this many seconds of training; the lr schedule
    # then runs over the steps that fit in the budget (estimated from the step rate, capped by max_steps)
    cpu_threads: int = 0  # CPU intra-op threads; 0 = auto (1 for models < 20M parameters, else torch's)
    prefetch: int = 2  # batches built ahead on a background thread; 0 = built in the training thread
    # --- evaluation, logging, checkpoints
    eval_every: int = 100  # steps between evaluations; 0 = only at the end
    eval_batches: int = 8  # micro-batches per evaluation
    log_every: int = 10  # steps between metric rows
    save_every: int = 100  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # checkpoints kept on disk
    progress: bool = True  # progress bar
    plot: bool = True  # loss-curve PNG at the end
    # --- price tag
    price_per_hour: float = 0.0  # currency per device-hour
    cpu_watts: float = 65.0  # CPU power used for the energy estimate (no CPU power sensor)
    device_watts: float = 0.0  # >0: override the GPU's measured / rated power

    def validate(self) -> None:
        """Raise TrainConfigError naming the first key that breaks a rule."""
        if self.objective not in OBJECTIVES:
            raise TrainConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.schedule not in SCHEDULES:
            raise TrainConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        positive = ("max_steps", "micro_batch_size", "grad_accum_steps", "seq_len", "vocab_size")
        for name in (*positive, "eval_batches", "log_every", "keep_last", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < -1:
            raise TrainConfigError(
                f"warmup_steps must be >= 0 or -1 (10% of max_steps), got {self.warmup_steps}"
            )
        for name in ("eval_every", "save_every", "weight_decay", "max_grad_norm", "cpu_threads", "prefetch"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup >= self.max_steps and self.schedule != "constant":
            raise TrainConfigError(
                f"warmup_steps ({self.warmup}) must be < max_steps ({self.max_steps}) "
                f"for schedule {self.schedule!r}"
            )
        if not self.lr > 0:
            raise TrainConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise TrainConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("mlm_probability", "noise_density", "infill_ratio", "eval_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TrainConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.long_seq_len and self.long_seq_len <= self.seq_len:
            raise TrainConfigError(
                f"long_seq_len ({self.long_seq_len}) must be > seq_len ({self.seq_len}) or 0 (off)"
            )
        if not 0.0 < self.long_seq_len_start < 1.0:
            raise TrainConfigError(f"long_seq_len_start must be in (0, 1), got {self.long_seq_len_start}")
        if self.init_loss_scale != 2.0**16 and self.precision != "fp16":
            raise TrainConfigError(
                f"init_loss_scale is an fp16 setting but precision is {self.precision!r} (contradictory)"
            )

    @property
    def warmup(self) -> int:
        """Warm-up steps with -1 resolved to 10% of max_steps."""
        return self.max_steps // 10 if self.warmup_steps == -1 else self.warmup_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value):
    """``value`` (from YAML or a ``--set`` string) as the type of field ``key``."""
    hint = _HINTS[key]
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if not optional:
            raise TrainConfigError(f"{key} may not be null")
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise TrainConfigError(f"{key} must be a boolean, got {value!r}")
    try:
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(float(value)) if base is int and isinstance(value, str) and "e" in value else base(value)
    except (TypeError, ValueError):
        raise TrainConfigError(f"{key} must be {base.__name__}, got {value!r}") from None


def merge(cfg: TrainConfig, updates: dict, source: str) -> TrainConfig:
    """A copy of ``cfg`` with ``updates``; unknown keys raise naming all of them and ``source``."""
    unknown = sorted(set(updates) - set(_FIELDS))
    if unknown:
        raise TrainConfigError(
            f"unknown key(s) {unknown} in {source}; known keys: {', '.join(sorted(_FIELDS))}"
        )
    return dataclasses.replace(cfg, **{k: _coerce(k, v) for k, v in updates.items()})


def parse_sets(items: list[str]) -> dict:
    """``["lr=3e-4", "precision=bf16"]`` → dict; an item without ``=`` is an error naming it."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict:
    """The mapping in a run YAML file (an empty file is an empty mapping)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: a run config must be a mapping of keys, got {type(data).__name__}")
    return data
