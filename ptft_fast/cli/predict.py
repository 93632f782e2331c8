"""``ptft predict``: predictions of a fine-tuned model for a file without labels.

    ptft predict --model finetuned/best --input test.tsv --out predictions.tsv
    ptft predict --model runs/mrpc/best --input glue/MRPC/test.tsv --out submission/   # writes MRPC.tsv

Loads what ``ptft finetune`` kept (a full model, a head on a frozen base, or an adapter on its
base model) and writes labels (cls), numbers (reg), CoNLL tags (tok), SQuAD-style answers (qa) or
generated text (seq2seq, instruct); a GLUE preset's model writes the task's submission file into
the --out folder (MNLI: MNLI-m.tsv / MNLI-mm.tsv by the test file's name; AX.tsv for the
diagnostic set).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptft_fast.cli.errors import UsageError, input_path, int_at_least, output_folder
from ptft_fast.data import hf_datasets

DESCRIPTION = """Predictions of a fine-tuned model (OUT/best of ptft finetune, or a ptft merge folder) for a file
without labels: labels (cls), numbers (reg), CoNLL tags (tok), SQuAD-style answers (qa) or generated
text (seq2seq, instruct). A GLUE preset's model writes the task's submission file into the --out
folder (MNLI: MNLI-m.tsv / MNLI-mm.tsv by the test file's name; AX.tsv for the diagnostic set)."""

EXAMPLES = """examples:
  ptft predict --model finetuned/best --input test.tsv --out predictions.tsv
  ptft predict --model runs/mrpc/best --input glue/MRPC/test.tsv --out submission/
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predictions of a fine-tuned model for an unlabeled file (GLUE submission files)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--model", required=True, help="a fine-tuned folder (OUT/best of ptft finetune, or ptft merge)"
    )
    p.add_argument(
        "--input",
        required=True,
        help="file to predict on, in the task's format (labels not needed), or a datasets "
        "save_to_disk folder / .parquet / .arrow file with the task's columns",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output file (.tsv for cls/reg, CoNLL for tok, .json for qa, .jsonl for generation); "
        "a folder for a GLUE preset's model (the submission file is written into it)",
    )
    p.add_argument(
        "--base",
        default=None,
        help="the base model folder, if it moved since fine-tuning (default: task.json's)",
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help="examples per forward pass")
    p.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=64, help="seq2seq/instruct: longest generation"
    )
    p.set_defaults(func=run)
    return p


def validate(args) -> None:
    input_path("--model", args.model, kind="folder")
    if not hf_datasets.is_dataset(args.input):  # a datasets save_to_disk folder is an input too
        input_path("--input", args.input, kind="file")
    if args.base is not None:
        input_path("--base", args.base, kind="folder")
    card = Path(args.model) / "task.json"
    if not card.is_file():
        raise UsageError(f"--model {args.model!r}: no task.json (not a folder written by ptft finetune)")
    import json

    try:
        glue_preset = json.loads(card.read_text()).get("glue")
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--model {args.model!r}: task.json line {exc.lineno}: invalid JSON ({exc.msg})"
        ) from None
    if glue_preset:
        output_folder("--out", args.out)
    elif Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is a folder; predictions go to a file")


def run(args) -> int:
    validate(args)
    from ptft_fast.finetune import predict, saved

    f = saved.load(args.model, args.base)
    path, preds = predict.predict_file(
        f, args.input, args.out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    print(
        f"{len(preds.values)} predictions ({f.spec.task}{', GLUE ' + f.spec.glue if f.spec.glue else ''}) → {path}"
    )
    return 0
