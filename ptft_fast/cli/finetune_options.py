"""``ptft finetune``'s options for GLUE presets and baselines, feature extraction, ULMFiT's recipe
and merging, and the steps of the run that read them (kept apart from ``ptft_fast.cli.finetune``,
which calls them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptft_fast.cli.errors import UsageError, float_in, input_path, int_at_least


def add_options(p: argparse.ArgumentParser) -> None:
    from ptft_fast.finetune.glue import TASKS
    from ptft_fast.finetune.ulmfit import SCHEDULES

    g = p.add_argument_group("GLUE and evaluation")
    g.add_argument(
        "--glue",
        default=None,
        choices=sorted(TASKS),
        help="GLUE task preset: its columns (GLUE's TSV files or a datasets export), labels, metrics "
        "(MCC for CoLA, F1+accuracy for MRPC/QQP, Pearson/Spearman for STS-B, MNLI matched+mismatched) "
        "and score; sets --task; ptft predict then writes the submission file (default: none, no preset)",
    )
    g.add_argument(
        "--eval-mismatched",
        default=None,
        help="--glue mnli: the mismatched dev file, dev_mismatched.tsv (default: none)",
    )
    g.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the majority-class and bag-of-words baselines printed beside the result (cls/reg/tok)",
    )
    f = p.add_argument_group("feature extraction")
    f.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train the task head only, on the frozen model's features (with --pooling scalar-mix: ELMo)",
    )
    u = p.add_argument_group("ULMFiT")
    u.add_argument(
        "--layer-lr-decay",
        type=float_in(0.0, 1.0, low_open=True),
        default=1.0,
        help="discriminative learning rates: each layer group gets this times the lr of the one above "
        "(ULMFiT: 1/2.6 = 0.38; 1 = one lr)",
    )
    u.add_argument(
        "--schedule",
        default="linear",
        choices=SCHEDULES,
        help="lr schedule: linear warm-up/decay, or stlr (ULMFiT's slanted triangular)",
    )
    u.add_argument(
        "--stlr-cut-frac",
        type=float_in(0.0, 1.0, low_open=True),
        default=0.1,
        help="stlr: share of rising steps",
    )
    u.add_argument("--stlr-ratio", type=float_in(1.0), default=32.0, help="stlr: peak lr / lowest lr")
    u.add_argument(
        "--gradual-unfreeze",
        action="store_true",
        help="epoch e trains only the top e layer groups (the head first), until all are unfrozen",
    )
    add_loop_options(p)
    a = p.add_argument_group("after training")
    a.add_argument(
        "--merge-lora",
        action="store_true",
        help="--peft lora/ia3: also write OUT/merged, the adapter folded into a plain model folder",
    )


def add_loop_options(p: argparse.ArgumentParser) -> None:
    """The pre-training loop's machinery, for fine-tuning (ptft_fast.finetune.loop)."""
    from ptft_fast.cli.deepspeed_run import add_deepspeed_args
    from ptft_fast.train.config import PRECISIONS
    from ptft_fast.train.report import REPORT_TO

    s = p.add_argument_group("training loop (the machinery of ptft pretrain)")
    s.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="bf16: autocast; fp16: autocast with dynamic loss scaling",
    )
    s.add_argument(
        "--grad-accum",
        type=int_at_least(1),
        default=1,
        help="split each step's batch into this many micro-batches (the same update, less memory)",
    )
    s.add_argument(
        "--max-steps",
        type=int_at_least(0),
        default=0,
        help="train this many optimizer steps, over as many epochs as that takes (0: --epochs decides)",
    )
    s.add_argument(
        "--eval-every",
        type=int_at_least(0),
        default=0,
        help="score the dev split every N steps, and checkpoint (0: after every epoch)",
    )
    s.add_argument(
        "--early-stopping-patience",
        type=int_at_least(0),
        default=0,
        help="stop after this many dev evaluations without a better task metric (0: never)",
    )
    s.add_argument(
        "--resume",
        metavar="PATH|latest",
        default=None,
        help="continue the run in --out from its newest checkpoint (or a checkpoint folder) exactly (default: a fresh run)",
    )
    s.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the layers in backward: less memory, more compute",
    )
    s.add_argument(
        "--pack",
        dest="pack",
        action="store_true",
        default=None,
        help="cls/reg on BERT/RoBERTa: pack short examples into rows of --max-length, each attending "
        "only to itself (the encoder's padding-free varlen path); instruct packs by default",
    )
    s.add_argument(
        "--report-to",
        default="none",
        choices=REPORT_TO,
        help="also send the metrics (OUT/metrics.jsonl) to tensorboard (OUT/tensorboard), wandb or mlflow",
    )
    add_deepspeed_args(p)
    p.set_defaults(pack=None)  # --pack / instruct's --no-pack: resolved per task in validate


def validate_loop(args) -> None:
    """The loop options' combinations, the reporter's package and the checkpoint to resume."""
    from ptft_fast.cli.deepspeed_run import options_from_args
    from ptft_fast.train import checkpoint as ckpt
    from ptft_fast.train.report import require

    require(args.report_to)
    options_from_args(args)  # the DeepSpeed flags and their rules
    if args.pack and args.task not in ("cls", "reg", "instruct"):
        raise UsageError(
            f"--pack packs classification/regression examples (or instruct records), got --task {args.task}"
        )
    if (
        args.pack
        and args.task != "instruct"
        and (args.peft in ("prefix", "prompt") or args.pooling == "scalar-mix")
    ):
        raise UsageError(
            "--pack runs examples on the encoder's varlen path: not with --peft prefix/prompt (virtual "
            f"tokens) or --pooling scalar-mix, got --peft {args.peft} --pooling {args.pooling}"
        )
    if args.early_stopping_patience and args.eval_every == 0 and args.epochs == 1:
        raise UsageError(
            "--early-stopping-patience needs several evaluations: --eval-every N or --epochs > 1"
        )
    if args.resume is not None:
        ckpt.resolve(args.resume, Path(args.out))  # a missing or damaged checkpoint: one line, before work


def validate(args) -> None:
    """The combinations these options allow (UsageError), before any work."""
    if args.glue is not None:
        from ptft_fast.finetune.glue import TASKS

        kind = TASKS[args.glue].kind
        if args.task not in (None, kind):
            raise UsageError(f"--glue {args.glue} is a {kind} task, got --task {args.task}")
        args.task = kind
        if args.glue == "mnli" and args.eval_mismatched is None:
            raise UsageError(
                "--glue mnli scores matched and mismatched dev sets: give --eval-mismatched FILE"
            )
    elif args.task is None:
        raise UsageError("--task is required (or --glue TASK)")
    if args.eval_mismatched is not None:
        if args.glue != "mnli":
            raise UsageError("--eval-mismatched is for --glue mnli")
        input_path("--eval-mismatched", args.eval_mismatched, kind="file")
    if args.freeze_backbone and (args.peft != "none" or args.task in ("seq2seq", "instruct")):
        raise UsageError(
            "--freeze-backbone trains a task head alone: --task cls|reg|tok|qa and --peft none, "
            f"got --task {args.task} --peft {args.peft}"
        )
    if args.pooling == "scalar-mix" and args.task in ("seq2seq", "instruct"):
        raise UsageError(f"--pooling scalar-mix mixes a task head's features; --task {args.task} has no head")
    if args.merge_lora and args.peft not in ("lora", "ia3"):
        raise UsageError(f"--merge-lora folds a LoRA or (IA)³ adapter into the model, got --peft {args.peft}")


def glue_split(args, path):
    """The labeled examples of one of a GLUE preset's files (train, dev or eval)."""
    from ptft_fast.finetune import glue

    return glue.labeled(glue.read(glue.TASKS[args.glue], path), path)


def glue_data(args):
    """(train, eval, labels, mismatched eval or None, the columns read) of a GLUE preset's files."""
    from ptft_fast.finetune import glue

    task = glue.TASKS[args.glue]
    mm = glue_split(args, args.eval_mismatched) if args.eval_mismatched else None
    names = list(task.labels) if task.labels else None
    train, evaluation = glue_split(args, args.train), glue_split(args, args.eval)
    return train, evaluation, names, mm, glue.layout(task, args.train)[0]


def glue_evaluate(args, tokenizer, names, ev, mm):
    """evaluate(model) → the GLUE task's metrics and score on ``ev`` (and the mismatched set
    ``mm``; without it, MNLI's score is its matched accuracy — a dev split)."""
    from ptft_fast.finetune import glue, tasks

    task = glue.TASKS[args.glue]
    splits = [s for s in (ev, mm) if s is not None]
    if task.kind == "reg":
        data = [tasks.reg_data(tokenizer, s, args.max_length) for s in splits]
        predict = tasks.predict_reg
    else:
        data = [tasks.cls_data(tokenizer, s, names, args.max_length) for s in splits]
        predict = tasks.predict_cls

    matched_only = [k for k in task.metrics if not k.endswith("_mm")]

    def evaluate(model):
        scores = [glue.split_scores(task, predict(model, d), d["labels"].tolist()) for d in data]
        if mm is None and len(matched_only) < len(task.metrics):
            # a dev split has no mismatched half (MNLI): its matched metrics choose the epoch
            return {"score": sum(scores[0][k] for k in matched_only) / len(matched_only), **scores[0]}
        return glue.task_scores(task, *scores)

    return evaluate


def loop_settings(args) -> dict:
    """FinetuneConfig fields of these options."""
    from ptft_fast.cli.deepspeed_run import options_from_args

    deepspeed = options_from_args(args)
    return {
        "precision": args.precision,
        "grad_accum": args.grad_accum,
        "max_steps": args.max_steps,
        "eval_steps": args.eval_every,
        "patience": args.early_stopping_patience,
        "gradient_checkpointing": args.gradient_checkpointing,
        "out": args.out,
        "resume": args.resume,
        "report_to": args.report_to,
        "deepspeed": deepspeed if deepspeed.enabled else None,
        "layer_lr_decay": args.layer_lr_decay,
        "schedule": args.schedule,
        "stlr_cut_frac": args.stlr_cut_frac,
        "stlr_ratio": args.stlr_ratio,
        "gradual_unfreeze": args.gradual_unfreeze,
    }


def report_baselines(args, task: str, tr, evaluations, names) -> dict:
    """Print the baselines' scores on the eval set beside the model's; returns them (for task.json)."""
    from ptft_fast.finetune import baselines, glue

    if not args.baselines or task not in ("cls", "reg", "tok"):
        return {}
    preset = glue.TASKS[args.glue] if args.glue else None
    scores = baselines.baseline_scores(task, tr, evaluations, names, preset)
    for name, metrics in scores.items():
        shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(f"baseline {name}: {shown}")
    return scores
