"""Does pre-training pay off in a fixed budget? Pre-trained vs from scratch vs LoRA on the embedded task.

1. Pre-train a small BERT with masked LM for a wall-clock budget (``--budget-s``, default 420 s =
   7 minutes; or ``--pretrain-steps`` for a step budget that does not depend on machine load)
   through the library's :class:`~ptft_fast.train.trainer.Trainer` with the run defaults of
   ``ptft pretrain`` (``--set key=value`` overrides one), on text that ships with Python: the
   pydoc topics plus the docstrings of the standard library's source files, with the task's
   held-out eval texts removed (no evaluation text is seen before evaluation).
2. For each labeled-set size in ``--train-sizes`` (a class-stratified sample of the task's 670
   training examples, drawn per seed) and each seed, fine-tune with the defaults of
   ``ptft finetune`` (:func:`~ptft_fast.finetune.defaults.choose_recipe`: learning rate from the
   model width, batch size and epochs from the labeled-set size; no hand-tuned flags):
   (a) ``pretrained``: the pre-trained weights, (b) ``scratch``: random initialisation of the same
   architecture with the same tokenizer (``ptft finetune --init random``), (c) ``lora``: LoRA on
   the pre-trained weights (base frozen, head trainable).
3. Print the last-epoch accuracy on the task's 154 held-out examples (mean ± std over seeds; no
   checkpoint is selected on them) and the transfer effect per size; append one row per size,
   setting and seed to ``benchmarks/results/transfer_cpu.csv`` (``_cuda`` on a GPU) with commit,
   device, CPU model and versions, and plot the latest run next to it.

Threads follow ``ptft``'s policy (1 intra-op thread for small models: on this 2-core machine with
other jobs running, 2 threads made a tiny model's step up to 50× slower; the second core builds
batches); ``--threads 2`` forces two.

Run (the full 7-minute experiment): ``python -m ptft_fast.benchmarks.bench_transfer``.
A quick end-to-end check: ``--budget-s 60 --train-sizes 60,670 --seeds 0``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv
from ptft_fast.utils.device import cpu_model, device_name

SETTINGS = ("pretrained", "scratch", "lora")
FIELDS = ["setting", "train_examples", "seed", "last_accuracy", "best_accuracy", "last_macro_f1", "lr",
          "epochs", "batch_size", "pooling", "trainable_pct", "model", "vocab_size", "pretrain_budget_s",
          "pretrain_steps", "pretrain_tokens", "pretrain_seconds", "pretrain_eval_loss", "pretrain_sets",
          "threads", "note", "device", "cpu_model", "torch", "numpy", "python", "commit",
          "timestamp"]  # fmt: skip


def stratified_sample(examples: list, n: int, seed: int) -> list:
    """``n`` examples with the label proportions of ``examples`` (largest remainders), seeded."""
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


def write_corpus(path: Path, eval_texts: set[str]) -> int:
    """Pre-training corpus JSONL: pydoc topics + stdlib docstrings without ``eval_texts``;
    returns the number of characters written."""
    from ptft_fast.data.corpus import embedded_documents
    from ptft_fast.data.stdlib_docstrings import stdlib_docstring_documents

    docs = [*embedded_documents(), *stdlib_docstring_documents(exclude=eval_texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for d in docs:
            f.write(json.dumps({"text": d.text, "source": d.source}) + "\n")
    return sum(len(d.text) for d in docs)


def pretrain(args, eval_texts: set[str]) -> dict:
    """Pre-train with the library's Trainer; the run summary (``final_model`` is the HF folder)."""
    from ptft_fast.train.config import TrainConfig, merge, parse_sets
    from ptft_fast.train.trainer import Trainer

    out = Path(args.out)
    corpus = out / "corpus.jsonl"
    chars = write_corpus(corpus, eval_texts)
    print(
        f"pre-training corpus (pydoc topics + stdlib docstrings, eval texts excluded): {chars:,} characters"
    )
    # a time budget alone is not capped by a step count (max_steps 0 = auto), as for `ptft pretrain`
    budget = {"max_steps": args.pretrain_steps} if args.pretrain_steps else {"max_time_s": args.budget_s}
    cfg = TrainConfig(model=args.model, objective="mlm", data=str(corpus), out=str(out / "pretrain"),
                      seed=args.seed, progress=args.progress, plot=False, **budget)  # fmt: skip
    cfg = merge(cfg, parse_sets(args.set), "--set")
    if args.threads:
        cfg = merge(cfg, {"cpu_threads": args.threads}, "--threads")
    summary = Trainer(cfg).run()
    print(f"pre-trained {summary['steps']} steps, {summary['tokens']:,} tokens in "
          f"{summary['train_seconds']:.0f} s; eval loss {summary['eval_loss']:.3f} "
          f"(unigram entropy {summary['unigram_entropy']:.3f})")  # fmt: skip
    return summary


def finetune(
    folder: str, setting: str, train_ex, eval_ex, labels, seed: int, threads: int = 0, **given
) -> dict:
    """One fine-tuning run with ``ptft finetune``'s defaults (``given``: pooling, lr, epochs,
    batch_size overrides, for studies of the defaults); last/best eval accuracy."""
    from ptft_fast.finetune import FinetuneConfig, TaskModel, train
    from ptft_fast.finetune import defaults as d
    from ptft_fast.finetune.session import load_model_dir
    from ptft_fast.finetune.tasks import cls_data, evaluate_cls
    from ptft_fast.peft import LoraConfig, get_peft_model, param_report
    from ptft_fast.train.trainer import set_cpu_threads

    init = "random" if setting == "scratch" else "pretrained"
    backbone, config, tok = load_model_dir(folder, init=init, seed=seed)
    set_cpu_threads(threads, backbone, torch.device("cpu"))  # ptft finetune's thread policy
    torch.manual_seed(seed)
    peft = "lora" if setting == "lora" else "none"
    pooling = given.pop("pooling", None) or d.default_pooling(config.arch)
    model = TaskModel(backbone, "cls", len(labels), pooling=pooling)
    if peft == "lora":
        get_peft_model(model, "lora", LoraConfig(r=d.LORA_R, alpha=d.LORA_ALPHA))
    recipe = d.choose_recipe(config.hidden_size, len(train_ex), peft=peft, **given)
    train_data = cls_data(tok, train_ex, labels, d.MAX_LENGTH)
    eval_data = cls_data(tok, eval_ex, labels, d.MAX_LENGTH)
    every = max(1, recipe.epochs // 10)  # the last epoch is always evaluated
    ft = FinetuneConfig(
        recipe.epochs, recipe.batch_size, recipe.lr, seed=seed, progress=False, eval_every=every
    )
    hist = train(model, train_data, lambda m: evaluate_cls(m, eval_data), ft, metric="accuracy")
    return {
        "best_accuracy": hist.best["accuracy"],
        "last_accuracy": hist.epochs[-1]["accuracy"],
        "last_macro_f1": hist.epochs[-1]["macro_f1"],
        "trainable_pct": param_report(model).percent,
        "lr": recipe.lr,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "pooling": pooling,
    }


def summarize(rows: list[dict]) -> dict[tuple[int, str], tuple[float, float]]:
    """(train size, setting) → (mean, std) of the last-epoch accuracy over seeds."""
    out = {}
    for key in dict.fromkeys((r["train_examples"], r["setting"]) for r in rows):
        acc = [r["last_accuracy"] for r in rows if (r["train_examples"], r["setting"]) == key]
        out[key] = (statistics.fmean(acc), statistics.pstdev(acc))
    return out


def plot_curve(csv_path: Path, png_path: Path) -> Path:
    """Last-epoch accuracy (mean ± std over seeds) vs labeled examples, one line per setting, for
    the newest run (timestamp) in ``csv_path``."""
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
    budget = f"{r0['pretrain_budget_s']} s" if r0["pretrain_budget_s"] else f"{r0['pretrain_steps']} steps"
    ax.set_title(f"stdlib-docstring task · {r0['model']} pre-trained {budget} ({r0['pretrain_steps']} steps)\n"
                 f"{r0['device']} · {r0['threads']} threads · torch {r0['torch']} · {latest}", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=420.0, help="pre-training wall-clock budget (seconds)")
    p.add_argument("--pretrain-steps", type=int, default=0, help="a step budget instead of --budget-s")
    p.add_argument("--model", default="bert-tiny", help="model preset to pre-train (default: bert-tiny)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pre-training setting")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU intra-op threads (0 = ptft's choice: 1 for small models)"
    )
    p.add_argument(
        "--pretrained", default=None, help="skip pre-training: an HF-format folder with tokenizer.json"
    )
    p.add_argument("--train-sizes", default="30,60,120,240,670", help="labeled examples per run")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {SETTINGS}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tuning seeds")
    p.add_argument("--seed", type=int, default=0, help="pre-training seed")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "ptft-bench-transfer"))
    p.add_argument(
        "--csv", default=None, help="default benchmarks/results/transfer_<cpu|cuda>.csv; '' = none"
    )
    p.add_argument("--note", default="", help="free text stored on every row (e.g. 'shared machine')")
    p.add_argument("--progress", action="store_true", help="progress bar during pre-training")
    study = p.add_argument_group("studies of the fine-tuning defaults (default: ptft finetune's)")
    study.add_argument("--ft-lr", type=float, default=None, help="fine-tuning learning rate")
    study.add_argument("--ft-epochs", type=int, default=None, help="fine-tuning epochs")
    study.add_argument("--pooling", default=None, choices=("auto", "mean"), help="sequence pooling")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ptft_fast.finetune import docstring_task

    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {SETTINGS}")
    tr, ev, labels = docstring_task()
    pre = {"steps": None, "tokens": None, "train_seconds": None, "eval_loss": None}
    if args.pretrained:
        folder = args.pretrained
    else:
        pre = pretrain(args, {e.text for e in ev})
        folder = pre["final_model"]
    print(f"embedded task: {len(tr)} train / {len(ev)} eval examples, {len(labels)} labels {labels}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = json.loads((Path(folder) / "config.json").read_text())
    extra = {**environment(device), "cpu_model": cpu_model(), "numpy": np.__version__,
             "python": platform.python_version(), "note": args.note, "model": args.model,
             "vocab_size": cfg.get("vocab_size"), "pretrain_budget_s": 0 if args.pretrain_steps else args.budget_s,
             "pretrain_steps": pre["steps"], "pretrain_tokens": pre["tokens"],
             "pretrain_seconds": pre["train_seconds"], "pretrain_eval_loss": pre["eval_loss"],
             "pretrain_sets": " ".join(args.set), "threads": pre.get("cpu_threads") or args.threads,
             "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    path = Path(args.csv) if args.csv else RESULTS_DIR / f"transfer_{device.type}.csv"
    rows = []
    for n in [int(x) for x in args.train_sizes.split(",")]:
        for setting in settings:
            for seed in [int(s) for s in args.seeds.split(",")]:
                sub = stratified_sample(tr, n, seed)
                t0 = time.perf_counter()
                given = {"lr": args.ft_lr, "epochs": args.ft_epochs, "pooling": args.pooling}
                r = {**finetune(folder, setting, sub, ev, labels, seed, args.threads, **given), "setting": setting, "seed": seed,
                     "train_examples": len(sub), **extra}  # fmt: skip
                rows.append(r)
                if args.csv != "":
                    write_csv([r], path, FIELDS)  # each row as soon as it is measured
                print(f"n={len(sub):4d} {setting:10s} seed {seed}  last acc {r['last_accuracy']:.4f}  "
                      f"best {r['best_accuracy']:.4f}  lr {r['lr']:.2g} bs {r['batch_size']} "
                      f"{r['epochs']} epochs  ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    s = summarize(rows)
    print(f"\nlast-epoch eval accuracy, mean ± std over seeds ({len(ev)} held-out examples), "
          f"{device_name(device)}:")  # fmt: skip
    for (n, name), (mean, std) in s.items():
        print(f"  n={n:4d} {name:10s} {100 * mean:5.1f} ± {100 * std:.1f}")
    for n in dict.fromkeys(k[0] for k in s):
        if (n, "pretrained") in s and (n, "scratch") in s:
            gain = 100 * (s[(n, "pretrained")][0] - s[(n, "scratch")][0])
            print(f"n={n}: transfer effect {gain:+.1f} points (target >= +10)")
    if args.csv != "":
        print(f"rows appended to {path}; plot {plot_curve(path, path.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
