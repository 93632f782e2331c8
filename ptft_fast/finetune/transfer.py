"""The transfer effect on the embedded task, in one script.

1. Pre-train a small BERT with ``ptft pretrain`` (MLM) on text that ships with Python (or reuse
   ``--pretrained DIR``: an HF-format folder with tokenizer.json): the pydoc topics plus, with
   ``--corpus pydoc+stdlib`` (default), the docstrings of the standard library's source files
   (``ptft_fast.data.stdlib_docstrings``; domain-adaptive pre-training) — with the task's held-out
   eval texts removed, so no evaluation text is seen before evaluation.
2. For each labeled-set size in ``--train-sizes`` (a class-stratified sample of the task's 670
   training examples, drawn per seed; all sizes ≤ 1,000) fine-tune with the same budget (optimizer
   steps, batch size, learning rate, schedule) and the same seeds:
   (a) from the pre-trained weights, (b) from random initialisation of the same architecture,
   (c) LoRA on the pre-trained weights (base frozen, head trainable).
3. Print eval accuracy on the 154 held-out examples (last epoch, mean ± std over seeds; the best
   epoch for reference) and the trainable share; append one row per size, setting and seed to
   ``benchmarks/results/finetune_transfer.csv``.

The defaults are the configuration of the recorded result: BERT-Tiny shape (2 layers, hidden 128,
2 heads, FFN 512) with a 4,096-token WordPiece vocabulary trained on the corpus, mean pooling
(MLM pre-training never trains the [CLS] state), LoRA r=8 on the fused q/k/v and output projections.

The budget is a number of optimizer steps (``--finetune-steps``), so a small labeled set gets as
many updates as the full one (epochs = steps / batches per epoch).

Run: ``python -m ptft_fast.finetune.transfer [--steps 7000] [--train-sizes 30,60,120,240,670] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import platform
import statistics
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "finetune_transfer.csv"
FIELDS = ["setting", "seed", "last_accuracy", "best_accuracy", "last_macro_f1", "trainable", "trainable_pct",
          "lr", "epochs", "train_examples", "eval_examples", "model", "pretrain_steps", "pretrain_eval_loss",
          "device", "torch", "timestamp"]  # fmt: skip


def stratified_sample(examples: list, n: int, seed: int) -> list:
    """``n`` examples with the label proportions of ``examples`` (largest remainders), seeded."""
    import random

    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    by: dict = {}
    for e in examples:
        by.setdefault(e.label, []).append(e)
    quota = {k: n * len(v) / len(examples) for k, v in by.items()}
    take = {k: int(q) for k, q in quota.items()}
    for k in sorted(quota, key=lambda k: quota[k] - take[k], reverse=True)[: n - sum(take.values())]:
        take[k] += 1
    out = [e for k, v in by.items() for e in rng.sample(v, take[k])]
    rng.shuffle(out)
    return out


def epochs_for(n: int, steps: int, batch_size: int = 16) -> int:
    """Epochs that give at least ``steps`` optimizer steps on ``n`` examples."""
    return max(1, math.ceil(steps / math.ceil(n / batch_size)))


def _finetune(backbone, tok, labels, tr, ev, *, peft: str, args, lr: float, seed: int) -> dict:
    from ptft_fast.finetune import FinetuneConfig, TaskModel, train
    from ptft_fast.finetune.tasks import cls_data, evaluate_cls
    from ptft_fast.peft import LoraConfig, get_peft_model, param_report

    torch.manual_seed(seed)
    model = TaskModel(backbone, "cls", len(labels), pooling=args.pooling)
    if peft == "lora":
        targets = args.lora_targets.split(",")
        get_peft_model(
            model, "lora", LoraConfig(r=args.lora_r, alpha=2 * args.lora_r, target_modules=targets)
        )
    report = param_report(model)
    train_data = cls_data(tok, tr, labels, args.max_length)
    eval_data = cls_data(tok, ev, labels, args.max_length)
    epochs = epochs_for(len(tr), args.finetune_steps)
    hist = train(
        model,
        train_data,
        lambda m: evaluate_cls(m, eval_data),
        FinetuneConfig(
            epochs=epochs, batch_size=16, lr=lr, seed=seed, progress=False, eval_every=max(1, epochs // 10)
        ),
        metric="accuracy",
    )
    return {
        "best_accuracy": hist.best["accuracy"],
        "last_accuracy": hist.epochs[-1]["accuracy"],
        "last_macro_f1": hist.epochs[-1]["macro_f1"],
        "trainable_pct": report.percent,
        "trainable": report.trainable,
        "epochs": epochs,
    }


def write_corpus(path: Path, eval_texts: set[str], corpus: str) -> int:
    """Pre-training corpus JSONL: pydoc topics (+ stdlib docstrings without ``eval_texts``);
    returns the number of characters written."""
    from ptft_fast.data.corpus import embedded_documents
    from ptft_fast.data.stdlib_docstrings import stdlib_docstring_documents

    docs = list(embedded_documents())
    if corpus == "pydoc+stdlib":
        docs += list(stdlib_docstring_documents(exclude=eval_texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for d in docs:
            f.write(json.dumps({"text": d.text, "source": d.source}) + "\n")
    return sum(len(d.text) for d in docs)


def _pretrain(args, eval_texts: set[str]) -> tuple[str, float | None]:
    """Run ``ptft pretrain``; (final model folder, last eval loss)."""
    from ptft_fast.cli import main as ptft

    corpus = Path(args.out) / "corpus.jsonl"
    chars = write_corpus(corpus, eval_texts, args.corpus)
    print(f"pre-training corpus ({args.corpus}, eval texts excluded): {chars:,} characters -> {corpus}")

    sets = {"max_steps": args.steps, "vocab_size": args.vocab_size, "lr": args.pretrain_lr,
            "warmup_steps": max(1, args.steps // 20), "eval_every": max(1, args.steps // 4),
            "save_every": max(1, args.steps // 4), "plot": "false", "seed": args.seed,
            "data": str(corpus)}  # fmt: skip
    argv = ["pretrain", "--model", args.model, "--objective", "mlm", "--out", args.out, "--no-progress"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    rc = ptft(argv)
    if rc != 0:
        raise SystemExit(f"pre-training failed (exit {rc})")
    return str(Path(args.out) / "final"), last_eval(Path(args.out))[1]


def last_eval(run: Path) -> tuple[int | None, float | None]:
    """(step, eval loss) of the last evaluation in a ``ptft pretrain`` run folder's metrics."""
    step = loss = None
    metrics = run / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if "eval_loss" in row:
                step, loss = row["step"], row["eval_loss"]
    return step, loss


def _summary(rows: list[dict]) -> dict[tuple[int, str], dict]:
    """(train size, setting) → mean/std of the last-epoch accuracy over seeds, mean best epoch."""
    out: dict[tuple[int, str], dict] = {}
    for key in dict.fromkeys((r["train_examples"], r["setting"]) for r in rows):
        rs = [r for r in rows if (r["train_examples"], r["setting"]) == key]
        last = [r["last_accuracy"] for r in rs]
        out[key] = {
            "mean_last": statistics.fmean(last),
            "std_last": statistics.pstdev(last),
            "mean_best": statistics.fmean(r["best_accuracy"] for r in rs),
            "trainable_pct": rs[0]["trainable_pct"],
            "trainable": rs[0]["trainable"],
        }
    return out


def _write_csv(path: Path, rows: list[dict], extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**r, **extra})


def plot_curve(csv_path: Path, png_path: Path) -> None:
    """Last-epoch accuracy (mean ± std over seeds) vs labeled examples, one line per setting, from
    the rows of the latest run (newest timestamp) in ``csv_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    latest = max(r["timestamp"] for r in rows)
    rows = [r for r in rows if r["timestamp"] == latest]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["setting"] for r in rows):
        sizes = sorted({int(r["train_examples"]) for r in rows if r["setting"] == name})
        acc = [[100 * float(r["last_accuracy"]) for r in rows
                if r["setting"] == name and int(r["train_examples"]) == n] for n in sizes]  # fmt: skip
        pct = float(next(r["trainable_pct"] for r in rows if r["setting"] == name))
        ax.errorbar(sizes, [statistics.fmean(a) for a in acc], yerr=[statistics.pstdev(a) for a in acc],
                    marker="o", capsize=3, label=f"{name} ({pct:.2f}% trainable)")  # fmt: skip
    ax.set_xscale("log")
    ticks = sorted({int(r["train_examples"]) for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled training examples (class-stratified sample)")
    ax.set_ylabel("eval accuracy, last epoch (%)")
    r0 = rows[0]
    ax.set_title(f"stdlib-docstring task · {r0['model'].split(' (')[0]} · pre-trained {r0['pretrain_steps']} steps\n"
                 f"{r0['device']} · torch {r0['torch']} · {latest}", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--pretrained", default=None, help="HF-format folder with tokenizer.json (skip pre-training)"
    )
    p.add_argument("--model", default="bert-tiny", help="model preset to pre-train (default: bert-tiny)")
    p.add_argument("--vocab-size", type=int, default=4096, help="WordPiece vocabulary trained on the corpus")
    p.add_argument("--out", default="runs/transfer", help="pre-training run folder")
    p.add_argument("--corpus", default="pydoc+stdlib", choices=("pydoc", "pydoc+stdlib"))
    p.add_argument("--steps", type=int, default=7000, help="pre-training optimizer steps")
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument(
        "--train-sizes", default="30,60,120,240,670", help="labeled examples per run (comma-separated)"
    )
    p.add_argument("--finetune-steps", type=int, default=400, help="optimizer steps per fine-tuning run")
    p.add_argument("--lr", type=float, default=3e-3, help="full fine-tuning learning rate (both settings)")
    p.add_argument("--lora-lr", type=float, default=1e-2)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-targets", default="qkv,out", help="comma-separated module names")
    p.add_argument("--pooling", default="mean", choices=("auto", "mean"))
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tuning seeds")
    p.add_argument("--seed", type=int, default=0, help="pre-training seed")
    p.add_argument("--csv", default=str(RESULTS), help="CSV to append the rows to ('' = none)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ptft_fast.finetune import docstring_task
    from ptft_fast.finetune.session import load_model_dir
    from ptft_fast.models import build_model

    tr, ev, labels = docstring_task()
    if args.pretrained:  # a run's final/ folder: its metrics sit one level up
        folder, (pre_steps, pre_loss) = args.pretrained, last_eval(Path(args.pretrained).resolve().parent)
    else:
        (folder, pre_loss), pre_steps = _pretrain(args, {e.text for e in ev}), args.steps
    print(f"embedded task: {len(tr)} train / {len(ev)} eval examples, {len(labels)} labels {labels}")
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(n) for n in args.train_sizes.split(",")]
    settings = (("pretrained-full", "none", args.lr), ("random-init-full", "none", args.lr),
                (f"pretrained-lora-r{args.lora_r}", "lora", args.lora_lr))  # fmt: skip
    rows = []
    for n in sizes:
        for name, peft, lr in settings:
            for seed in seeds:
                backbone, config, tok = load_model_dir(folder)
                if name.startswith("random"):
                    torch.manual_seed(seed)
                    backbone = build_model(config)
                sub = stratified_sample(tr, n, seed)
                r = _finetune(backbone, tok, labels, sub, ev, peft=peft, args=args, lr=lr, seed=seed)
                r.update(setting=name, seed=seed, lr=lr, train_examples=len(sub), eval_examples=len(ev))
                print(f"n={len(sub):4d} {name:20s} seed {seed}  last acc {r['last_accuracy']:.4f}  "
                      f"best {r['best_accuracy']:.4f}  trainable {r['trainable']:,} ({r['trainable_pct']:.2f}%)",
                      flush=True)  # fmt: skip
                rows.append(r)
    s = _summary(rows)
    print(f"\nlast-epoch eval accuracy, mean ± std over seeds {seeds} ({len(ev)} held-out examples):")
    for (n, name), v in s.items():
        print(f"  n={n:4d} {name:20s} {100 * v['mean_last']:5.1f} ± {100 * v['std_last']:.1f}  "
              f"(best epoch {100 * v['mean_best']:.1f})  trainable {v['trainable_pct']:.2f}%")  # fmt: skip
    for n in dict.fromkeys(k[0] for k in s):
        full, rand, lora = (s[(n, name)] for name, _, _ in settings)
        print(f"n={n}: transfer effect {100 * (full['mean_last'] - rand['mean_last']):+.1f} points; "
              f"LoRA r={args.lora_r} {100 * (lora['mean_last'] - full['mean_last']):+.1f} points vs full "
              f"fine-tuning with {lora['trainable_pct']:.2f}% of the parameters trainable")  # fmt: skip
    if args.csv:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        shape = f"L{cfg.get('num_hidden_layers')} H{cfg.get('hidden_size')} V{cfg.get('vocab_size')}"
        source = f"{args.model} {args.corpus}" if not args.pretrained else folder
        extra = {"model": f"{cfg.get('model_type')} {shape} ({source})",
                 "pretrain_steps": pre_steps,
                 "pretrain_eval_loss": pre_loss, "device": f"CPU {platform.machine()}",
                 "torch": torch.__version__,
                 "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        _write_csv(Path(args.csv), rows, extra)
        plot_curve(Path(args.csv), Path(args.csv).with_suffix(".png"))
        print(f"rows appended to {args.csv}; plot {Path(args.csv).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
