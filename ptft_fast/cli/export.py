"""``ptft export-zero``: consolidate a DeepSpeed ZeRO-1/2/3 checkpoint into one HF-format folder.

Runs on CPU without a GPU; shards are streamed, so memory stays near one copy of the weights.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """Consolidate a DeepSpeed ZeRO-1/2/3 checkpoint (from ptft pretrain --zero-stage) into one Hugging
Face-format folder (config.json + model.safetensors). Runs on a CPU; shards are streamed, so memory
stays near one copy of the weights."""

EXAMPLES = """examples:
  ptft export-zero runs/bert/checkpoints --out runs/bert/hf
  ptft export-zero runs/bert/checkpoints/step_00000100 --out hf --dtype bf16
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-zero",
        help="consolidate a DeepSpeed ZeRO checkpoint into an HF model folder",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument(
        "ckpt_dir", metavar="CKPT_DIR", help="checkpoint folder, or its parent with a `latest` file"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (config.json + model.safetensors)"
    )
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weight dtype written")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ptft_fast.cli.errors import input_path, output_folder, removed_on_error
    from ptft_fast.train.zero_export import export_zero

    input_path("CKPT_DIR", args.ckpt_dir, kind="folder")
    output_folder("--out", args.out)
    with removed_on_error(args.out):
        out = export_zero(args.ckpt_dir, args.out, dtype=args.dtype)
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
    return 0
