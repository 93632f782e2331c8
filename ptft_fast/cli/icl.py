"""``ptft icl``: zero/one/few-shot evaluation by verbalizer likelihood, accuracy per k.

    ptft icl --model runs/gpt --task dev.jsonl --shots 0,1,4
    ptft icl --model runs/gpt --task stdlib-docstrings --shots 0,1,4 --limit 100

Demonstrations come from --demos (default: the task file itself, never the query).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("icl", help="in-context (k-shot) evaluation, accuracy per k")
    p.add_argument("--model", required=True, help="directory: config.json, model.safetensors, tokenizer.json")
    p.add_argument("--task", required=True, help="labeled .tsv/.csv/.jsonl file, or stdlib-docstrings")
    p.add_argument("--demos", default=None, help="file of demonstrations (default: the task file)")
    p.add_argument("--shots", default="0,1,4", help="comma-separated k values")
    p.add_argument("--template", default="Text: {text}\nLabel:")
    p.add_argument("--verbalizers", default=None, help="label=word,... (default: the label itself)")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N queries")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ptft_fast.finetune.icl import evaluate_icl
    from ptft_fast.finetune.readers import Columns, read_examples
    from ptft_fast.finetune.session import EMBEDDED, load_model_dir, load_task_data

    shots = [int(k) for k in args.shots.split(",")]
    cols = Columns(args.text_column, None, args.label_column)
    if args.task == EMBEDDED:
        demos, queries, labels = load_task_data("cls", EMBEDDED, EMBEDDED, cols, None)
    else:
        queries = read_examples(args.task, cols)
        demos = read_examples(args.demos, cols) if args.demos else None
        labels = sorted({str(e.label) for e in (demos or []) + queries})
    queries = queries[: args.limit] if args.limit else queries
    verbalizers = dict(kv.split("=", 1) for kv in args.verbalizers.split(",")) if args.verbalizers else None
    model, _, tok = load_model_dir(args.model, dropout=0.0, attention_dropout=0.0)
    if demos is None:  # leave-one-out: a query never demonstrates itself
        acc = {k: 0.0 for k in shots}
        for i, q in enumerate(queries):
            pool = queries[:i] + queries[i + 1 :]
            for k, v in evaluate_icl(
                model,
                tok,
                pool,
                [q],
                labels,
                shots,
                verbalizers=verbalizers,
                template=args.template,
                seed=args.seed + i,
            ).items():
                acc[k] += v / len(queries)
    else:
        acc = evaluate_icl(
            model,
            tok,
            demos,
            queries,
            labels,
            shots,
            verbalizers=verbalizers,
            template=args.template,
            seed=args.seed,
        )
    print(f"{len(queries)} queries, labels {labels}")
    for k, v in acc.items():
        print(f"k={k}\taccuracy={v:.4f}")
    return 0
