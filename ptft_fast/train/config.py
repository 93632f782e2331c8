"""``TrainConfig``: every knob of a pre-training run, typed, with its meaning and allowed values.

Sources merge in this order: defaults → ``--config run.yaml`` → ``--set key=value`` → CLI flags.
Unknown keys and contradictory settings raise :class:`TrainConfigError` naming them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from ptft_fast.errors import UserInputError

OBJECTIVES = (
    "mlm", "mlm+nsp", "spanbert", "electra", "clm", "prefix-lm", "span", "infill",
    "seq2seq-mlm", "seq2seq-prefix-lm", "deshuffle",
)  # fmt: skip
MASK_STRATEGIES = ("token", "whole_word", "span")
BART_NOISES = ("mask", "delete", "infill", "permute", "rotate")
SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
PRECISIONS = ("fp32", "bf16", "fp16")
# Which model family each objective trains, and the tokenizer kind it trains by default.
OBJECTIVE_ARCHS = {
    "mlm": ("bert", "roberta"),
    "mlm+nsp": ("bert",),
    "spanbert": ("bert", "roberta"),
    "electra": ("bert", "roberta"),
    "clm": ("gpt2",),
    "prefix-lm": ("gpt2",),
    "span": ("t5",),
    "infill": ("bart",),
    "seq2seq-mlm": ("t5",),
    "seq2seq-prefix-lm": ("t5",),
    "deshuffle": ("t5",),
}
DEFAULT_TOKENIZER = {"bert": "wordpiece", "roberta": "bpe", "gpt2": "bpe", "t5": "unigram", "bart": "bpe"}
# max_steps=0 (the default) resolves to this without a time budget; with max_time_s > 0 the
# budget alone ends the run (no step cap): a user who gives a time budget gets all of it.
DEFAULT_MAX_STEPS = 300
NO_STEP_CAP = 2**62
# Objectives whose packed rows may keep their documents apart (cross_document_attention).
DOCUMENT_AWARE = ("clm", "prefix-lm", "mlm")


# World-average carbon intensity of electricity generation in 2023 (the price tag's default CO2e).
GRID_GCO2_PER_KWH = 480.0
GRID_SOURCE = (
    "480 g/kWh, the world average of 2023 electricity generation (Ember, Global Electricity Review 2024)"
)


class TrainConfigError(UserInputError):
    """A bad run configuration; the message names the key(s), the rule and the value."""


def setting(
    default,
    meaning: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[str, ...] | None = None,
    rule: str | None = None,
):
    """A TrainConfig field with its documentation and allowed values (``ptft pretrain
    --list-settings`` prints them; :meth:`TrainConfig.validate` enforces ``low``/``high``/
    ``choices``; ``rule`` describes a check that involves other keys, written out in validate)."""
    meta = {"meaning": meaning, "low": low, "high": high, "low_open": low_open, "high_open": high_open}
    meta.update(choices=choices, rule=rule)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every key is a ``setting`` with a one-line meaning and its allowed values."""

    # --- what to train
    model: str = setting(
        "bert-tiny-cpu",
        "the model to pre-train, from random weights",
        rule="a preset (list: ptft models) or a config.json / HF model folder",
    )
    objective: str = setting(
        "mlm", "pre-training objective; must suit the model's family", choices=OBJECTIVES
    )
    data: str | None = setting(
        None, "shard folder, .txt/.jsonl files or a folder of them, or a datasets save_to_disk folder / "
        ".parquet / .arrow file; none = embedded pydoc corpus; a mixture: path:weight,path:weight (token "
        "shares; YAML: a list of {path, weight})",
    )  # fmt: skip
    text_column: str | None = setting(
        None, "datasets input: the column holding the text; none = detected (text, content, ... or the only "
        "string column)",
    )  # fmt: skip
    out: str = setting("runs/pretrain", "run folder: metrics, checkpoints, summary, final model")
    seed: int = setting(0, "seeds python, numpy, torch, the data order and the held-out split", low=0)
    # --- data and tokenizer
    vocab_size: int = setting(
        1024, "size of the tokenizer trained on the corpus (presets take it as their vocabulary)", low=1
    )
    seq_len: int = setting(
        128, "model positions per row, several documents packed per row (span/infill: encoder length)", low=1
    )
    long_seq_len: int = setting(
        0, "> 0: rows of this length for the last part of training (BERT: 512)", low=0,
        rule="0 (off) or > seq_len",
    )  # fmt: skip
    long_seq_len_start: float = setting(
        0.9, "fraction of max_steps after which long_seq_len is used", low=0, high=1, low_open=True,
        high_open=True,
    )  # fmt: skip
    eval_fraction: float = setting(
        0.05, "share of documents held out for evaluation (text inputs; a `ptft prepare` folder has its own)",
        low=0, high=1, high_open=True,
    )  # fmt: skip
    mlm_probability: float = setting(
        0.3, "mlm/mlm+nsp/spanbert/electra: share of tokens chosen for prediction (BERT, SpanBERT: 0.15; "
        "0.3 gave +4-7 points on the fine-tuned embedded task after 2,000 bert-tiny steps: README)",
        low=0, high=1, low_open=True, high_open=True,
    )  # fmt: skip
    mask_strategy: str | None = setting(
        None, "mlm/mlm+nsp/electra/spanbert: what is chosen: tokens, whole words (WordPiece ## / "
        "BPE G / Unigram _ word starts), or SpanBERT spans (geometric p=0.2 lengths in words, at most 10); "
        "none = the objective's (spanbert: span, else token)", choices=MASK_STRATEGIES,
        rule="spanbert needs span",
    )  # fmt: skip
    noise_density: float = setting(
        0.15, "span / seq2seq-mlm (T5): share of tokens corrupted (in spans / i.i.d.)", low=0, high=1,
        high_open=True,
    )  # fmt: skip
    mean_noise_span_length: float = setting(
        3.0, "span (T5): mean length of a corrupted span", low=0, low_open=True
    )
    infill_ratio: float = setting(
        0.3, "infill (BART) text infilling: share of tokens replaced by masked spans", low=0, high=1,
        high_open=True,
    )  # fmt: skip
    bart_noise: str = setting(
        "infill,permute", "infill (BART): the noising, a comma list of mask (token masking), delete "
        "(token deletion), infill (text infilling), permute (sentence permutation), rotate (document "
        "rotation); the BART paper's best and default: infill,permute",
        rule="one or more of " + "|".join(BART_NOISES),
    )  # fmt: skip
    bart_mask_ratio: float = setting(
        0.3, "infill with bart_noise mask: share of tokens replaced by <mask>", low=0, high=1, low_open=True,
        high_open=True,
    )  # fmt: skip
    bart_delete_ratio: float = setting(
        0.3, "infill with bart_noise delete: share of tokens deleted", low=0, high=1, low_open=True,
        high_open=True,
    )  # fmt: skip
    poisson_lambda: float = setting(
        3.0,
        "infill with bart_noise infill: mean (Poisson λ) of the masked span lengths",
        low=0,
        low_open=True,
    )
    electra_disc_weight: float = setting(50.0, "electra: weight of the discriminator loss", low=0)
    cross_document_attention: bool | None = setting(
        None,
        "whether the documents packed into a row attend to each other. true: a row is one sequence "
        "(positions run on across it; clm scores every token: GPT-2's packing; mlm: RoBERTa's "
        "FULL-SENTENCES); false: each document attends only to itself and its positions restart "
        "(clm/prefix-lm: a prefix per document; mlm: DOC-SENTENCES-like, eager only); "
        "none (YAML: null) = the objective's default (clm/prefix-lm false, mlm true)",
        rule="only with objective clm, prefix-lm or mlm",
    )
    prefix_fraction: float = setting(
        0.0, "prefix-lm: the prefix as this fraction of each document (piece); 0 = uniform in [1, n - 1] tokens",
        low=0, high=1, high_open=True, rule="only with objective prefix-lm",
    )  # fmt: skip
    prefix_lm_causal_share: float = setting(
        0.0, "prefix-lm: share of documents drawn as causal-LM ones (a 1-token prefix, every later token "
        "scored): UniLM/UL2's mix of causal and prefix-LM sequences in a batch; 0 = all prefix-LM",
        low=0, high=1, high_open=True, rule="only with objective prefix-lm",
    )  # fmt: skip
    electra_generator_size: float = setting(
        1 / 3, "electra: generator width as a fraction of the discriminator's (same depth, heads and MLP "
        "scaled with the width, embeddings shared; the paper found 1/4-1/2 best)", low=0, high=1,
        low_open=True,
    )  # fmt: skip
    # --- optimization
    max_steps: int = setting(
        0, f"optimizer steps; 0 = auto: {DEFAULT_MAX_STEPS}, or with max_time_s > 0 no cap (the time budget "
        "ends the run); given with max_time_s, whichever comes first", low=0,
    )  # fmt: skip
    micro_batch_size: int = setting(
        8, "rows per forward/backward pass (8 x 128 tokens, as transformers' per-device Trainer default: in a "
        "fixed time budget bert-tiny transferred better from 1.7x the steps of 8 rows than from 16-row steps: "
        "README; larger models on a GPU: set it, or grad_accum_steps, for the batch you want)", low=1,
    )  # fmt: skip
    grad_accum_steps: int = setting(1, "micro-batches per optimizer step (batch = product of the two)", low=1)
    lr: float = setting(1e-3, "peak learning rate (AdamW)", low=0, low_open=True)
    min_lr_ratio: float = setting(0.1, "floor of the linear/cosine decay, as a fraction of lr", low=0, high=1)
    warmup_steps: int = setting(
        -1, "linear warm-up steps from 0; -1 = 10% of the steps (of those that fit in max_time_s)", low=-1,
        rule="< max_steps unless schedule=constant",
    )  # fmt: skip
    schedule: str = setting("cosine", "learning-rate decay after warm-up", choices=SCHEDULES)
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and norm weights)", low=0)
    beta1: float = setting(0.9, "AdamW beta1 (first-moment decay)", low=0, high=1, high_open=True)
    beta2: float = setting(0.98, "AdamW beta2 (second-moment decay)", low=0, high=1, high_open=True)
    adam_eps: float = setting(1e-6, "AdamW epsilon", low=0)
    max_grad_norm: float = setting(1.0, "clip the global gradient norm to this; 0 = no clipping", low=0)
    precision: str = setting(
        "fp32", "fp32; bf16 (autocast); fp16 (autocast + dynamic loss scaling)", choices=PRECISIONS
    )
    init_loss_scale: float = setting(
        2.0**16, "fp16: initial loss scale", low=0, low_open=True, rule="only with precision=fp16"
    )
    loss_scale_window: int = setting(1000, "fp16: good steps before the loss scale doubles", low=1)
    gradient_checkpointing: bool = setting(False, "recompute layers in backward: less memory, more compute")
    max_bad_steps: int = setting(
        5, "NaN/inf steps are skipped with a warning; stop after this many in a row", low=1
    )
    max_time_s: float = setting(
        0.0,
        "> 0: stop (and save) after this many seconds of training in this invocation; the lr "
        "schedule then runs over the steps that fit in the budget (re-estimated from the step rate; "
        "capped by max_steps only if max_steps is given)",
        low=0,
    )
    cpu_threads: int = setting(
        0,
        "CPU threads; 0 = auto (1 for models under 20M parameters, else torch's default; 2 threads "
        "measured 6-20x slower than 1 on a loaded 2-core machine: README)",
        low=0,
    )
    prefetch: int = setting(
        2, "batches built ahead on a background thread; 0 = built in the training thread", low=0
    )
    compile: bool = setting(False, "torch.compile the model, fullgraph (the ops stay opaque custom ops)")
    compile_backend: str = setting(
        "inductor", "torch.compile backend (aot_eager: tracing without code generation)",
        rule="a torch.compile backend name, not empty",
    )  # fmt: skip
    cuda_graphs: bool = setting(
        False, "CUDA: capture forward + backward + optimizer step once and replay it (fixed shapes)",
        rule="needs fixed shapes and a device-only step (no long_seq_len, electra, infill, mlm+nsp, "
        "spanbert, fp16, gradient checkpointing)",
    )  # fmt: skip
    # --- evaluation, logging, checkpoints
    eval_every: int = setting(100, "steps between evaluations; 0 = only at the end", low=0)
    eval_batches: int = setting(8, "micro-batches per evaluation (the same rows every time)", low=1)
    log_every: int = setting(10, "steps per metrics row (the row's loss is their mean)", low=1)
    save_every: int = setting(100, "steps between checkpoints; 0 = only at the end", low=0)
    keep_last: int = setting(3, "checkpoints kept on disk", low=1)
    progress: bool = setting(True, "show the progress bar")
    report_to: str = setting(
        "none", "also send metric rows to tensorboard (OUT/tensorboard), wandb or mlflow (optional extras)",
        choices=("none", "tensorboard", "wandb", "mlflow"),
    )  # fmt: skip
    plot: bool = setting(True, "write loss_curve.png at the end")
    # --- price tag
    price_per_hour: float = setting(0.0, "price of one device-hour, for the cost in the summary", low=0)
    cpu_watts: float = setting(65.0, "CPU power for the energy estimate (no CPU power sensor)", low=0)
    device_watts: float = setting(0.0, "> 0: GPU power to use instead of the measured / rated one", low=0)
    grid_gco2_per_kwh: float = setting(
        GRID_GCO2_PER_KWH, "carbon intensity of the electricity for the CO2e in the price tag, gCO2e per kWh; "
        f"default: {GRID_SOURCE}", low=0,
    )  # fmt: skip

    def validate(self) -> None:
        """Raise TrainConfigError naming the first key that breaks a rule."""
        for f in dataclasses.fields(self):
            problem = out_of_range(f, getattr(self, f.name))
            if problem:
                raise TrainConfigError(f"{f.name} must be {problem}, got {getattr(self, f.name)!r}")
        if self.warmup >= self.step_limit and self.schedule != "constant":
            raise TrainConfigError(
                f"warmup_steps ({self.warmup}) must be < max_steps ({self.step_limit}) "
                f"for schedule {self.schedule!r}"
            )
        if self.long_seq_len and self.step_limit == NO_STEP_CAP:
            raise TrainConfigError(
                f"long_seq_len switches at long_seq_len_start x max_steps, but max_steps is not given and "
                f"max_time_s={self.max_time_s:g} leaves the steps uncapped: give max_steps too"
            )
        if self.long_seq_len and self.long_seq_len <= self.seq_len:
            raise TrainConfigError(
                f"long_seq_len ({self.long_seq_len}) must be > seq_len ({self.seq_len}) or 0 (off)"
            )
        self._check_objective_settings()
        if not self.compile_backend:
            raise TrainConfigError("compile_backend must name a torch.compile backend, got ''")
        if self.cross_document_attention is not None and self.objective not in DOCUMENT_AWARE:
            raise TrainConfigError(
                f"cross_document_attention is a {'/'.join(DOCUMENT_AWARE)} setting but objective is "
                f"{self.objective!r} (contradictory)"
            )
        graphed = self.compile or self.cuda_graphs
        if graphed and self.objective == "mlm" and not self.attends_across_documents:
            raise TrainConfigError(
                "mlm with cross_document_attention=false runs the encoder's eager padding-free path; "
                "it cannot be combined with compile=true or cuda_graphs=true"
            )
        for key in ("prefix_fraction", "prefix_lm_causal_share"):
            if getattr(self, key) and self.objective != "prefix-lm":
                raise TrainConfigError(
                    f"{key} is a prefix-lm setting but objective is {self.objective!r} (contradictory)"
                )
        if self.cuda_graphs:
            self._check_graphable()
        if self.init_loss_scale != 2.0**16 and self.precision != "fp16":
            raise TrainConfigError(
                f"init_loss_scale is an fp16 setting but precision is {self.precision!r} (contradictory)"
            )

    def _check_objective_settings(self) -> None:
        noises = [n.strip() for n in self.bart_noise.split(",")]
        bad = [n for n in noises if n not in BART_NOISES]
        if bad or not self.bart_noise.strip():
            raise TrainConfigError(
                f"bart_noise must be a comma list of {'|'.join(BART_NOISES)}, got {self.bart_noise!r}"
            )
        if self.objective == "spanbert" and self.mask_strategy not in (None, "span"):
            raise TrainConfigError(
                f"objective 'spanbert' masks spans (its boundary objective needs them), but "
                f"mask_strategy={self.mask_strategy!r} (contradictory options)"
            )

    @property
    def masking_strategy(self) -> str:
        """mask_strategy with none resolved: span for spanbert, else token."""
        return self.mask_strategy or ("span" if self.objective == "spanbert" else "token")

    def _check_graphable(self) -> None:
        """cuda_graphs replays one captured step: every step must have the same shapes and keep
        its decisions on the device."""
        why = None
        if self.long_seq_len:
            why = f"long_seq_len={self.long_seq_len} switches the sequence length mid-run"
        elif self.objective in ("electra", "infill", "mlm+nsp", "spanbert"):
            why = {
                "electra": "ELECTRA samples replacement tokens between its two models",
                "infill": "BART text infilling shortens each row by a random amount",
                "mlm+nsp": "sentence pairs have varying lengths",
                "spanbert": "the span-boundary head gathers a varying number of span tokens",
            }[self.objective] + " (shapes vary)"
        elif self.precision == "fp16":
            why = "fp16's dynamic loss scaling decides on the host whether a step is skipped; use bf16"
        elif self.gradient_checkpointing:
            why = "gradient checkpointing saves and restores RNG state on the host in backward"
        if why:
            raise TrainConfigError(f"cuda_graphs needs fixed shapes and a device-only step: {why}")

    @property
    def attends_across_documents(self) -> bool:
        """cross_document_attention with null resolved: false for clm / prefix-lm (each document
        attends to itself), true otherwise (every other objective packs rows as one sequence)."""
        if self.cross_document_attention is not None:
            return self.cross_document_attention
        return self.objective not in ("clm", "prefix-lm")

    @property
    def step_limit(self) -> int:
        """The steps the run may make: ``max_steps`` if given; else :data:`DEFAULT_MAX_STEPS`, or with
        a time budget :data:`NO_STEP_CAP` (the budget ends the run)."""
        if self.max_steps:
            return self.max_steps
        return NO_STEP_CAP if self.max_time_s > 0 else DEFAULT_MAX_STEPS

    @property
    def warmup(self) -> int:
        """Warm-up steps with -1 resolved to 10% of the step limit (without a time budget; with one
        the schedule takes 10% of the planned steps: ``schedule.lr_factor``)."""
        if self.warmup_steps != -1:
            return self.warmup_steps
        return 0 if self.step_limit == NO_STEP_CAP else self.step_limit // 10

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
# --list-settings prints the keys in field order under these headings (keyed by a section's first key).
SECTIONS = {
    "model": "what to train",
    "vocab_size": "data and tokenizer",
    "max_steps": "optimization",
    "eval_every": "evaluation, logging, checkpoints",
    "price_per_hour": "price tag",
}


def _num(x: float) -> str:
    return f"{x:g}"


def allowed(f: dataclasses.Field) -> str:
    """The values field ``f`` accepts, in words: ``one of a|b``, ``>= 1``, ``in [0, 1)``, ..."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + "|".join(m.get("choices"))
    low, high = m.get("low"), m.get("high")
    if low is not None and high is not None:
        text = f"in {'(' if m['low_open'] else '['}{_num(low)}, {_num(high)}{')' if m['high_open'] else ']'}"
    elif low is not None:
        text = f"{'>' if m['low_open'] else '>='} {_num(low)}"
    elif high is not None:
        text = f"{'<' if m['high_open'] else '<='} {_num(high)}"
    elif _base_type(f.name) is bool:
        text = "true|false"
    else:
        text = "any"
    return text


def out_of_range(f: dataclasses.Field, value) -> str | None:
    """None when ``value`` is allowed for field ``f``, else the rule it breaks (:func:`allowed`)."""
    m = f.metadata
    if value is None or isinstance(value, bool):
        return None
    if m.get("choices"):
        return None if value in m.get("choices") else allowed(f)
    low, high = m.get("low"), m.get("high")
    ok = low is None or (value > low if m.get("low_open") else value >= low)  # False for NaN
    ok = ok and (high is None or (value < high if m.get("high_open") else value <= high))
    return None if ok else allowed(f)


def _base_type(key: str) -> type:
    hint = _HINTS[key]
    return next((a for a in typing.get_args(hint) if a is not type(None)), hint)


def _type_name(key: str) -> str:
    optional = type(None) in typing.get_args(_HINTS[key])
    return _base_type(key).__name__ + (" or none" if optional else "")


def _default_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def describe(f: dataclasses.Field) -> tuple[str, str]:
    """(``key: type = default  (allowed)``, meaning) of one TrainConfig field."""
    rule, limits = f.metadata.get("rule"), allowed(f)
    if rule:
        limits = rule if limits == "any" else f"{limits}; {rule}"
    head = f"{f.name}: {_type_name(f.name)} = {_default_text(f.default)}"
    return (head if limits == "any" else f"{head}  ({limits})"), f.metadata.get(
        "meaning", "(undocumented: declare the key with setting())"
    )


def settings_table() -> str:
    """Every TrainConfig key with its type, default, allowed values and meaning: what
    ``ptft pretrain --list-settings`` prints (generated from the dataclass, so it cannot drift)."""
    lines = [
        "Settings of `ptft pretrain`: give them as --set KEY=VALUE (repeatable) or as keys of a --config",
        "YAML file. Later sources win: defaults, --config, --set, then the flags (--model, --objective, ...).",
    ]
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            lines += ["", f"{SECTIONS[f.name]}:"]
        head, meaning = describe(f)
        lines += [f"  {head}", f"      {meaning}"]
    return "\n".join(lines)


def _coerce(key: str, value):
    """``value`` (from YAML or a ``--set`` string) as the type of field ``key``."""
    optional = type(None) in typing.get_args(_HINTS[key])
    base = _base_type(key)
    if key == "data" and isinstance(value, list):  # YAML mixture: [{path, weight}, ...] or ["a:0.7", ...]
        from ptft_fast.data.mixture import mixture_spec, parse_mixture

        try:
            pairs = parse_mixture(value)
        except ValueError as exc:
            raise TrainConfigError(str(exc)) from None
        return mixture_spec(pairs) if pairs else str(value[0])
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
            f"unknown key(s) {unknown} in {source} (every key with its meaning: ptft pretrain "
            f"--list-settings); known keys: {', '.join(sorted(_FIELDS))}"
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

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise TrainConfigError(
            f"{path}: not valid YAML{line} ({getattr(exc, 'problem', None) or exc})"
        ) from None
    except UnicodeDecodeError as exc:
        raise TrainConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: a run config must be a mapping of keys, got {type(data).__name__}")
    return data
