"""``ptft icl``: zero/one/few-shot evaluation by verbalizer likelihood, accuracy per k.

Demonstrations come from --demos (default: the task file itself, never the query).
"""

from __future__ import annotations

import argparse

from ptft_fast.cli.errors import UsageError, input_path, int_at_least, int_list
from ptft_fast.cli.help import MODEL_FOLDER

DESCRIPTION = """In-context (k-shot) evaluation of a GPT-2 or T5/BART model folder: each query is preceded by k
labeled demonstrations and classified by the likeliest verbalized label; prints the accuracy per k.
Demonstrations come from --demos, or from the task file itself (never the query)."""

EXAMPLES = """examples:
  ptft icl --model runs/gpt/final --task dev.jsonl --shots 0,1,4
  ptft icl --model runs/gpt/final --task stdlib-docstrings --shots 0,1,4 --limit 100
  ptft icl --model runs/gpt/final --task dev.tsv --demos train.tsv --verbalizers pos=great,neg=awful
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "icl",
        help="in-context (k-shot) evaluation, accuracy per k",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("--model", required=True, help=MODEL_FOLDER)
    p.add_argument("--task", required=True, help="labeled .tsv/.csv/.jsonl file, or stdlib-docstrings")
    p.add_argument("--demos", default=None, help="file of demonstrations (default: the task file)")
    p.add_argument("--shots", type=int_list(0), default=[0, 1, 4], help="comma-separated k values")
    p.add_argument("--template", default="Text: {text}\nLabel:", help="prompt of one example, with {text}")
    p.add_argument("--verbalizers", default=None, help="label=word,... (default: the label itself)")
    p.add_argument("--text-column", default="sentence", help="text column")
    p.add_argument("--label-column", default="label", help="label column")
    p.add_argument(
        "--limit",
        type=int_at_least(1),
        default=None,
        help="evaluate the first N queries, demonstrations still from all (default: every query)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of demonstrations")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ptft_fast.cli.generate import load_generative_model
    from ptft_fast.finetune.icl import evaluate_icl
    from ptft_fast.finetune.readers import Columns, read_examples
    from ptft_fast.finetune.session import EMBEDDED, load_task_data

    if "{text}" not in args.template:
        raise UsageError(f"--template must contain {{text}}, got {args.template!r}")
    verbalizers = parse_verbalizers(args.verbalizers)
    cols = Columns(args.text_column, None, args.label_column)
    if args.task == EMBEDDED:
        demos, queries, labels = load_task_data("cls", EMBEDDED, EMBEDDED, cols, None)
    else:
        queries = read_examples(input_path("--task", args.task, kind="file"), cols)
        demos = read_examples(input_path("--demos", args.demos, kind="file"), cols) if args.demos else None
        for e in (*queries, *(demos or [])):
            if e.label is None:
                raise UsageError(f"{e.where}: no label in column {args.label_column!r} (--label-column)")
        labels = sorted({str(e.label) for e in (demos or []) + queries})
    missing = sorted(set(labels) - set(verbalizers)) if verbalizers else []
    if missing:
        raise UsageError(f"--verbalizers has no word for label(s) {missing}")
    pool = len(demos) if demos is not None else len(queries) - 1  # leave-one-out: never the query
    if max(args.shots) > pool:
        raise UsageError(
            f"--shots {max(args.shots)} needs {max(args.shots)} demonstrations, the pool has {pool}"
        )
    model, _, tok = load_generative_model(args.model, "in-context evaluation scores verbalizers with")
    evaluated = queries[: args.limit] if args.limit else queries
    if demos is None:  # leave-one-out over the whole file: a query never demonstrates itself
        acc = {k: 0.0 for k in args.shots}
        for i, q in enumerate(evaluated):
            pool_i = queries[:i] + queries[i + 1 :]
            for k, v in evaluate_icl(
                model,
                tok,
                pool_i,
                [q],
                labels,
                args.shots,
                verbalizers=verbalizers,
                template=args.template,
                seed=args.seed + i,
            ).items():
                acc[k] += v / len(evaluated)
    else:
        acc = evaluate_icl(
            model,
            tok,
            demos,
            evaluated,
            labels,
            args.shots,
            verbalizers=verbalizers,
            template=args.template,
            seed=args.seed,
        )
    print(f"{len(evaluated)} queries, labels {labels}")
    for k, v in acc.items():
        print(f"k={k}\taccuracy={v:.4f}")
    return 0


def parse_verbalizers(text: str | None) -> dict[str, str] | None:
    """``"pos=great,neg=awful"`` → {"pos": "great", "neg": "awful"}; a malformed item is a UsageError."""
    if text is None:
        return None
    out = {}
    for item in text.split(","):
        label, sep, word = item.partition("=")
        if not sep or not label.strip() or not word.strip():
            raise UsageError(f"--verbalizers expects label=word,..., got item {item!r} in {text!r}")
        out[label.strip()] = word.strip()
    return out
