"""The transfer effect on the embedded task, in one script.

1. Pre-train a tiny BERT with ``ptft pretrain`` (MLM) on the embedded pydoc corpus (or reuse
   ``--pretrained DIR``: an HF-format folder with tokenizer.json).
2. Fine-tune on the stdlib-docstring task (≤ 1,000 labeled examples) with the same budget:
   (a) from the pre-trained weights, (b) from random initialisation of the same architecture,
   (c) LoRA r=8 on the pre-trained weights (base frozen, head trainable).
3. Print eval accuracy (best and last epoch) and trainable-parameter share for each; append the
   rows to ``benchmarks/results/finetune_transfer.csv``.

Run: ``python -m ptft_fast.finetune.transfer [--steps 600] [--epochs 8] [--pretrained DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
from pathlib import Path

import torch


def _finetune(
    backbone, tok, labels, tr, ev, *, peft: str, epochs: int, lr: float, seed: int, max_length: int
):
    from ptft_fast.finetune import FinetuneConfig, TaskModel, train
    from ptft_fast.finetune.tasks import cls_data, evaluate_cls
    from ptft_fast.peft import LoraConfig, get_peft_model, param_report

    torch.manual_seed(seed)
    model = TaskModel(backbone, "cls", len(labels))
    if peft == "lora":
        get_peft_model(
            model, "lora", LoraConfig(r=8, alpha=16, target_modules=["qkv", "out", "fc_in", "fc_out"])
        )
    report = param_report(model)
    train_data, eval_data = cls_data(tok, tr, labels, max_length), cls_data(tok, ev, labels, max_length)
    hist = train(
        model,
        train_data,
        lambda m: evaluate_cls(m, eval_data),
        FinetuneConfig(epochs=epochs, batch_size=16, lr=lr, seed=seed, progress=False),
        metric="accuracy",
    )
    return {
        "best_accuracy": hist.best["accuracy"],
        "last_accuracy": hist.epochs[-1]["accuracy"],
        "last_macro_f1": hist.epochs[-1]["macro_f1"],
        "trainable_pct": report.percent,
        "trainable": report.trainable,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--pretrained", default=None, help="HF-format folder with tokenizer.json (skip pre-training)"
    )
    p.add_argument("--out", default="runs/transfer", help="pre-training run folder")
    p.add_argument("--steps", type=int, default=600, help="pre-training optimizer steps")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning learning rate")
    p.add_argument("--lora-lr", type=float, default=3e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from ptft_fast.cli import main as ptft
    from ptft_fast.finetune import docstring_task
    from ptft_fast.finetune.session import load_model_dir
    from ptft_fast.models import build_model

    folder = args.pretrained
    if folder is None:
        rc = ptft(["pretrain", "--model", "bert-tiny-cpu", "--objective", "mlm", "--out", args.out,
                   "--set", f"max_steps={args.steps}", "--set", "plot=false", "--no-progress"])  # fmt: skip
        if rc != 0:
            raise SystemExit(f"pre-training failed (exit {rc})")
        folder = str(Path(args.out) / "final")
    tr, ev, labels = docstring_task()
    print(f"embedded task: {len(tr)} train / {len(ev)} eval examples, {len(labels)} labels {labels}")
    rows = []
    for name, peft, lr in (("pretrained-full", "none", args.lr), ("random-init-full", "none", args.lr),
                           ("pretrained-lora-r8", "lora", args.lora_lr)):  # fmt: skip
        pretrained, config, tok = load_model_dir(folder)
        if name.startswith("random"):
            torch.manual_seed(args.seed)
            backbone = build_model(config)
        else:
            backbone = pretrained
        r = _finetune(backbone, tok, labels, tr, ev, peft=peft, epochs=args.epochs, lr=lr, seed=args.seed,
                      max_length=args.max_length)  # fmt: skip
        r.update(setting=name, lr=lr, epochs=args.epochs, train_examples=len(tr), eval_examples=len(ev))
        print(f"{name:20s} best acc {r['best_accuracy']:.4f}  last acc {r['last_accuracy']:.4f}  "
              f"trainable {r['trainable']:,} ({r['trainable_pct']:.2f}%)")  # fmt: skip
        rows.append(r)
    by = {r["setting"]: r for r in rows}
    gain = by["pretrained-full"]["last_accuracy"] - by["random-init-full"]["last_accuracy"]
    lora_gap = by["pretrained-full"]["last_accuracy"] - by["pretrained-lora-r8"]["last_accuracy"]
    print(
        f"transfer effect (last epoch): {100 * gain:+.1f} points; LoRA r=8 vs full: {100 * lora_gap:+.1f} points behind"
    )
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "finetune_transfer.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    fields = ["setting", "best_accuracy", "last_accuracy", "last_macro_f1", "trainable", "trainable_pct", "lr",
              "epochs", "train_examples", "eval_examples", "pretrain_steps", "device", "torch", "timestamp"]  # fmt: skip
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            pre = args.steps if args.pretrained is None else "external"
            w.writerow(
                {
                    **r,
                    "pretrain_steps": pre,
                    "device": f"CPU {platform.machine()}",
                    "torch": torch.__version__,
                    "timestamp": stamp,
                }
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
