"""``ptft merge``: fold a LoRA or (IA)³ fine-tune into its base model and write a plain model folder.

    ptft merge --model finetuned/best --out merged/

The output is a Hugging Face folder (config.json + model.safetensors, which transformers loads,
and tokenizer.json) with the task head and task.json beside it: ``ptft predict`` and
``ptft finetune --model`` take it like any other model folder.
"""

from __future__ import annotations

import argparse

from ptft_fast.cli.errors import input_path, output_folder, removed_on_error

DESCRIPTION = """Fold a LoRA or (IA)³ fine-tune into its base model and write a plain Hugging Face folder
(config.json + model.safetensors, tokenizer.json) with the task head and task.json beside it, which
ptft predict and ptft finetune --model take like any other model folder."""

EXAMPLES = """examples:
  ptft merge --model finetuned/best --out merged/
  ptft merge --model finetuned/best --out merged/ --base runs/pretrain/final
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge",
        help="fold a LoRA/(IA)³ fine-tune into its base model (a plain HF folder)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("--model", required=True, help="a fine-tuned folder with --peft lora or ia3 (OUT/best)")
    p.add_argument("--out", required=True, help="output folder for the merged model")
    p.add_argument(
        "--base",
        default=None,
        help="the base model folder, if it moved since fine-tuning (default: task.json's)",
    )
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    input_path("--model", args.model, kind="folder")
    if args.base is not None:
        input_path("--base", args.base, kind="folder")
    output_folder("--out", args.out)
    from ptft_fast.finetune import saved

    with removed_on_error(args.out):
        f = saved.merge(args.model, args.out, args.base)
    print(f"merged {args.model} ({f.config.arch}, task {f.spec.task}) → {args.out}")
    return 0
