"""``ptft models``: every model preset with its shape, parameter count, objectives and intended use."""

from __future__ import annotations

import argparse

from ptft_fast.cli.errors import int_at_least

EXAMPLES = """examples:
  ptft models
  ptft models --vocab-size 4096
  ptft pretrain --model bert-tiny --set vocab_size=4096 --set max_steps=3000 --set max_time_s=600
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "models",
        help="list the model presets: shape, parameters, objectives, intended use",
        description="List every model preset that --model accepts (ptft pretrain), with its shape, "
        "its parameter count and what it is meant for.",
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--vocab-size",
        type=int_at_least(1),
        default=None,
        help="also count parameters at this vocabulary size (default: ptft pretrain's vocab_size, 1024)",
    )
    p.set_defaults(func=run)
    return p


def parameter_count(config) -> int:
    """Parameters of the model ``config`` builds (tied matrices once), counted without allocating."""
    import torch

    from ptft_fast.models import build_model

    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


def with_vocab(config, vocab_size: int):
    """``config`` with ``vocab_size`` tokens; special-token ids beyond it move to its last id (their
    value does not change the parameter count)."""
    ids = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
    moved = {k: vocab_size - 1 for k in ids if (getattr(config, k) or 0) >= vocab_size}
    return config.replace(vocab_size=vocab_size, **moved)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def presets_table(vocab_size: int | None = None) -> str:
    """The table ``ptft models`` prints. Parameters are counted at the preset's own vocabulary and
    at ``vocab_size`` (default: TrainConfig's), the size ``ptft pretrain`` gives a preset: it fits
    presets to the tokenizer it trains."""
    from ptft_fast.models.config import PRESET_USES, PRESETS, ModelConfig
    from ptft_fast.train.config import OBJECTIVE_ARCHS, TrainConfig

    vocab = vocab_size or TrainConfig().vocab_size
    head = ("preset", "layers x hidden", "heads", "ffn", "positions", "vocab", "params", f"@vocab {vocab}",
            "objectives")  # fmt: skip
    rows = []
    for name in PRESETS:
        c = ModelConfig.from_name(name)
        layers = f"{c.num_layers}+{c.decoder_layers}" if c.is_encoder_decoder else str(c.num_layers)
        objectives = ",".join(o for o, archs in OBJECTIVE_ARCHS.items() if c.arch in archs)
        rows.append((
            name, f"{layers} x {c.hidden_size}", str(c.num_heads), str(c.ffn_size),
            "relative" if c.arch == "t5" else str(c.max_position_embeddings), str(c.vocab_size),
            _millions(parameter_count(c)), _millions(parameter_count(with_vocab(c, vocab))),
            objectives,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        lines.append(f"    {PRESET_USES[row[0]]}")
    lines += [
        "",
        f"layers: encoder+decoder for T5/BART. params: at the preset's own vocabulary; @vocab {vocab}: "
        "as `ptft pretrain` builds it,",
        "which fits a preset's vocabulary to the tokenizer it trains (--set vocab_size=N, default 1024).",
        "Pre-train one: ptft pretrain --model NAME --objective OBJECTIVE (settings: ptft pretrain "
        "--list-settings).",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(presets_table(args.vocab_size))
    return 0
