"""``ptft glue``: the GLUE table of fine-tuned models — each task's metrics and score, and the
GLUE score (the mean of the task scores), read from the task.json files ``ptft finetune --glue``
wrote.

    ptft glue runs/cola/best runs/sst2/best runs/mrpc/best ...

Scores are shown × 100, as on the leaderboard. Tasks not given are listed as missing; the average
is over the tasks given (the official score needs all nine).
"""

from __future__ import annotations

import argparse

from ptft_fast.cli.errors import UsageError, input_path

DESCRIPTION = """The GLUE table of fine-tuned models (each the OUT/best of ptft finetune --glue TASK): every
task's metrics on its eval set and the GLUE score, the mean of the task scores."""

EXAMPLES = """examples:
  ptft glue runs/cola/best runs/sst2/best runs/mrpc/best
  ptft glue runs/*/best
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "glue",
        help="GLUE table and score of fine-tuned models (ptft finetune --glue)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="fine-tuned folders (OUT/best), one per GLUE task")
    p.set_defaults(func=run)
    return p


def table(cards: list[tuple[str, dict]]) -> tuple[list[str], float]:
    """Lines of the table and the GLUE score (fraction) of (folder, task.json) pairs."""
    from ptft_fast.finetune import glue

    rows, scores = [], {}
    for where, card in cards:
        name = card.get("glue")
        if name not in glue.TASKS:
            raise UsageError(
                f"{where}: not a GLUE fine-tune (task.json has no GLUE preset; use ptft finetune --glue)"
            )
        if name in scores:
            raise UsageError(f"{where}: a second run of GLUE task {name}")
        task = glue.TASKS[name]
        metrics = card.get("eval_metrics") or card.get("metrics") or {}
        scored = glue.task_scores(task, {k: v for k, v in metrics.items() if isinstance(v, float)})
        scores[name] = scored["score"]
        parts = "  ".join(f"{k}={100 * scored[k]:.1f}" for k in task.metrics)
        base = card.get("baselines") or {}
        shown = "  ".join(f"{b}: {100 * m['score']:.1f}" for b, m in base.items() if "score" in m)
        rows.append(
            f"{task.submission:<7} {100 * scored['score']:6.1f}   {parts}"
            + (f"   (baselines {shown})" if shown else "")
        )
    missing = [t.submission for t in glue.TASKS.values() if t.name not in scores]
    average = glue.glue_average(scores)
    lines = ["task     score   metrics", *rows, f"GLUE score over {len(scores)} task(s): {100 * average:.1f}"]
    if missing:
        lines.append(f"missing (the official score needs all nine): {', '.join(missing)}")
    return lines, average


def run(args) -> int:
    from ptft_fast.finetune.saved import read_card

    cards = []
    for r in args.runs:
        input_path("RUN", r, kind="folder")
        cards.append((r, read_card(r)))
    lines, _ = table(cards)
    print("\n".join(lines))
    return 0
