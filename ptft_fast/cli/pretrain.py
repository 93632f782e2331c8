"""``ptft pretrain``: pre-train a model on a corpus (default: the embedded pydoc corpus).

Settings merge in order: defaults, ``--config`` YAML, ``--set key=value``, then the flags below
(``--list-settings`` prints every key). Writes metrics.jsonl/.csv, checkpoints/, final/ (HF-format
model + tokenizer), summary.json and loss_curve.png under ``--out``.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Pre-train a model from random weights. Objectives (--objective), each with its paper's recipe:
  BERT/RoBERTa: mlm (BERT masking; --set mask_strategy=whole_word|span), mlm+nsp (BERT: masking and
    50/50 next-sentence pairs, BERT only), spanbert (span masking + span-boundary objective), electra
    (replaced-token detection; generator width: --set electra_generator_size, default 1/3)
  GPT-2: clm (causal LM), prefix-lm
  T5: span (span corruption), and the T5 paper's comparison variants seq2seq-mlm (BERT-style masking,
    the decoder reconstructs the original), seq2seq-prefix-lm, deshuffle
  BART: infill (denoising; --set bart_noise=mask,delete,infill,permute,rotate, any combination; default
    infill,permute with infill_ratio=0.3, poisson_lambda=3)
Without --data it trains on the text of the standard library's pydoc topics (no download).
A tokenizer is trained on the corpus first; the run folder gets metrics, checkpoints, the final model
(Hugging Face format) and a summary. Every setting: --list-settings; every model: --list-models."""

EXAMPLES = """examples:
  ptft pretrain --model bert-tiny --set max_time_s=600   # ten minutes (max_steps=N would cap the steps too)
  ptft pretrain --model bert-tiny --objective spanbert --set mlm_probability=0.15 --data corpus.txt
  ptft pretrain --model bart-tiny --objective infill --set bart_noise=delete,rotate --resume latest
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ptft_fast.train.report import REPORT_TO

    p = subparsers.add_parser(
        "pretrain",
        help="pre-train a model (MLM, NSP, SpanBERT, ELECTRA, CLM, prefix LM, T5 span and variants, BART noising)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("--model", help="preset name (see --list-models) or config.json / HF model folder "
                   "(default: bert-tiny-cpu, or the --config/--set value)")  # fmt: skip
    from ptft_fast.train.config import OBJECTIVES

    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="what the model learns to predict; must suit the model (list above; default: mlm)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        help="shard folder (ptft prepare), .txt/.jsonl files or a folder of them, or a Hugging Face datasets "
        "save_to_disk folder / .parquet / .arrow file; several sources with weights (shares of tokens) as a "
        "mixture: --data a.txt:0.7 b.txt:0.3 (default: the embedded pydoc corpus)",
    )
    p.add_argument(
        "--text-column",
        help="datasets input: the text column (default: detected: text, content, ... or the only string column)",
    )
    p.add_argument(
        "--report-to",
        choices=REPORT_TO,
        help="also send metrics to tensorboard (OUT/tensorboard), wandb or mlflow (default: none)",
    )
    p.add_argument("--config", help="run config YAML with TrainConfig keys (default: none)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one run setting, repeatable, e.g. --set max_time_s=600 --set cpu_threads=2; "
        "every key with its default and range: --list-settings",
    )
    p.add_argument("--out", help="run folder (default: runs/pretrain)")
    p.add_argument(
        "--resume",
        metavar="PATH|latest",
        help="continue from a checkpoint folder, or the newest one in --out (default: a fresh run)",
    )
    p.add_argument(
        "--price-per-hour",
        type=float,
        help="price of one device-hour for the summary's cost (default: 0); its CO2e uses --set "
        "grid_gco2_per_kwh=G (default: 480, the world average of 2023 electricity generation, Ember, "
        "Global Electricity Review 2024)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (fullgraph; kernels stay opaque ops)"
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA: capture forward + backward + optimizer step in one graph and replay it (fixed shapes)",
    )
    p.add_argument(
        "--list-settings", action="store_true", help="print every --set key (type, default, range, meaning)"
    )
    p.add_argument(
        "--list-models", action="store_true", help="print every model preset (same as ptft models)"
    )
    from ptft_fast.cli.deepspeed_run import add_deepspeed_args

    add_deepspeed_args(p)
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace):
    """TrainConfig from the merged sources; flags that repeat a --set/--config key with another value
    are rejected as contradictory."""
    from ptft_fast.train.config import TrainConfig, TrainConfigError, load_yaml, merge, parse_sets

    cfg = TrainConfig()
    if args.config:
        cfg = merge(cfg, load_yaml(args.config), args.config)
    sets = parse_sets(args.set)
    cfg = merge(cfg, sets, "--set")
    flags = {
        "model": args.model,
        "objective": args.objective,
        "data": data_flag(args.data),
        "out": args.out,
        "price_per_hour": args.price_per_hour,
        "text_column": args.text_column,
        "report_to": args.report_to,
    }
    if args.no_progress:
        flags["progress"] = False
    if args.compile:
        flags["compile"] = True
    if args.cuda_graphs:
        flags["cuda_graphs"] = True
    flags = {k: v for k, v in flags.items() if v is not None}
    clash = sorted(
        k for k in flags if k in sets and merge(cfg, {k: sets[k]}, "--set").to_dict()[k] != flags[k]
    )
    if clash:
        raise TrainConfigError(
            f"contradictory options: {clash} given both as a flag and with --set, differently"
        )
    cfg = merge(cfg, flags, "flags")
    cfg.validate()
    return cfg


def data_flag(items: list[str] | None) -> str | None:
    """--data's values as TrainConfig.data: one source as given, several joined into a mixture spec."""
    if not items:
        return None
    return items[0] if len(items) == 1 else ",".join(items)


def run(args: argparse.Namespace) -> int:
    if args.list_settings or args.list_models:
        return list_and_exit(args)
    from ptft_fast.cli.deepspeed_run import options_from_args
    from ptft_fast.cli.errors import UsageError, input_path, output_folder, removed_on_error
    from ptft_fast.train.build import tokenizer_kind
    from ptft_fast.train.deepspeed_run import make_trainer
    from ptft_fast.train.loop import format_summary
    from ptft_fast.train.report import require as require_reporter
    from ptft_fast.train.trainer import TrainingDiverged

    if args.config:
        input_path("--config", args.config, kind="file")
    cfg = build_config(args)
    require_reporter(cfg.report_to)  # wandb / mlflow installed: checked before any work
    out = output_folder("--out" if args.out else "out", cfg.out)
    if cfg.data is not None:
        from ptft_fast.data.mixture import parse_mixture

        try:
            sources = [p for p, _ in parse_mixture(cfg.data) or [(cfg.data, 1.0)]]
        except ValueError as exc:
            raise UsageError(f"{'--data' if args.data else 'data'}: {exc}") from None
        for source in sources:
            input_path("--data" if args.data else "data", source)
    tokenizer_kind(cfg)  # the model exists and suits the objective: checked before any work
    with removed_on_error(out):  # a fresh run folder is removed if building the run fails
        trainer = make_trainer(cfg, options_from_args(args), resume=args.resume)
    try:
        summary = trainer.run()
    except TrainingDiverged as exc:
        print(f"ptft pretrain: error: {exc}", file=sys.stderr)
        return 1
    if getattr(trainer, "rank", 0) == 0:
        print(format_summary(summary))
    return 0


def list_and_exit(args: argparse.Namespace) -> int:
    """--list-settings / --list-models: print and do nothing else."""
    from ptft_fast.cli.models import presets_table
    from ptft_fast.train.config import settings_table

    parts = ([settings_table()] if args.list_settings else []) + (
        [presets_table()] if args.list_models else []
    )
    print("\n\n".join(parts))
    return 0
