"""A user's whole job on a corpus that is not embedded, with the defaults a user gets.

The corpus is the docstrings of libraries installed here (numpy, scipy, pandas, sympy,
transformers, datasets by default), read from their source files with ``ast`` (nothing is
imported) and split into paragraphs: tens of thousands of short documents, most under 100 words.
The labeled task is the question "which library is this paragraph from", balanced: ``--per-class``
training paragraphs and ``--test-per-class`` held-out ones per library, drawn with ``--seed``; the
held-out paragraphs are removed from the pre-training corpus, and a paragraph found in two
libraries is dropped (its label would be ambiguous).

Then, through the CLI in fresh processes, as a user runs it:

1. ``ptft prepare corpus.jsonl --out prep`` (defaults);
2. ``ptft pretrain --data prep --set max_time_s=BUDGET`` (``--model`` if given; every other setting
   the default);
3. ``ptft finetune --task cls`` on the task's files without column flags (they are named ``body``
   and ``library``), from the pre-trained model and with ``--init random``, one run per
   ``--seeds`` seed; the bag-of-words baseline comes from the same report.

One CSV row per (setting, seed) with the eval accuracy / macro-F1 of the kept model, the pre-training
steps, eval loss and unigram entropy, the time each stage took, commit, device and versions
(``benchmarks/results/user_job_cpu.csv``); the printed table gives means over seeds.

Run: ``python -m ptft_fast.benchmarks.bench_user_job`` (120 s budget, default model), or e.g.
``--budget-s 420 --model bert-tiny``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata, util
from pathlib import Path

import torch

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv
from ptft_fast.utils.device import cpu_model

LIBRARIES = ("numpy", "scipy", "pandas", "sympy", "transformers", "datasets")
MIN_WORDS = 8  # a paragraph shorter than this is a heading or a fragment, not a document
FIELDS = ["setting", "seed", "accuracy", "macro_f1", "bow_accuracy", "bow_macro_f1", "majority_accuracy",
          "train_examples", "test_examples", "classes", "model", "pretrain_budget_s", "pretrain_sets",
          "pretrain_steps", "pretrain_eval_loss", "unigram_entropy", "pretrain_seconds", "prepare_seconds",
          "finetune_seconds", "corpus_documents", "prepared_documents", "libraries", "note", "device",
          "cpu_model", "torch", "python", "commit", "timestamp"]  # fmt: skip


def docstring_paragraphs(package: str) -> list[str]:
    """Whitespace-normalised paragraphs (blank-line separated, ≥ MIN_WORDS words, no doctest
    lines) of every module, class and function docstring in ``package``'s source files."""
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"--libraries: {package!r} is not an installed package")
    out = []
    for root in spec.submodule_search_locations:
        for path in sorted(Path(root).rglob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    out.extend(_paragraphs(ast.get_docstring(node) or ""))
    return out


def _paragraphs(doc: str) -> list[str]:
    keep = []
    for block in doc.split("\n\n"):
        lines = [ln.strip() for ln in block.splitlines()]
        if any(ln.startswith((">>>", "...")) for ln in lines):
            continue
        text = " ".join(" ".join(lines).split())
        if len(text.split()) >= MIN_WORDS:
            keep.append(text)
    return keep


def build_job(libraries: list[str], per_class: int, test_per_class: int, seed: int, folder: Path) -> dict:
    """Write ``corpus.jsonl`` (held-out paragraphs removed), ``train.csv`` and ``test.csv`` into
    ``folder``; returns their sizes."""
    by_lib = {lib: docstring_paragraphs(lib) for lib in libraries}
    seen = Counter(p for paras in by_lib.values() for p in set(paras))
    rng = random.Random(seed)
    train, test, held_out = [], [], set()
    for lib, paras in by_lib.items():
        unique = sorted({p for p in paras if seen[p] == 1})
        if len(unique) < per_class + test_per_class:
            raise SystemExit(f"{lib}: {len(unique)} paragraphs, fewer than {per_class + test_per_class}")
        rng.shuffle(unique)
        train += [(p, lib) for p in unique[:per_class]]
        test += [(p, lib) for p in unique[per_class : per_class + test_per_class]]
        held_out.update(unique[per_class : per_class + test_per_class])
    rng.shuffle(train)
    rng.shuffle(test)
    corpus = [p for paras in by_lib.values() for p in paras if p not in held_out]
    rng.shuffle(corpus)
    with (folder / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps({"text": p}) + "\n" for p in corpus)
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with (folder / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["body", "library"])
            w.writerows(rows)
    return {"corpus_documents": len(corpus), "train_examples": len(train), "test_examples": len(test)}


def ptft(*argv: str) -> float:
    """Run ``ptft ARGV`` in a fresh process (the user's command); returns its wall time. A failure
    stops the benchmark with the command's last output lines."""
    cmd = [sys.executable, "-m", "ptft_fast", *argv]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise SystemExit(f"ptft {' '.join(argv)} failed ({done.returncode}):\n{tail}")
    return time.perf_counter() - t0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=120.0, help="pre-training time budget (max_time_s)")
    p.add_argument("--model", default=None, help="pre-training model preset (default: ptft pretrain's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a pre-training setting")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help="installed packages, one class each")
    p.add_argument("--per-class", type=int, default=30, help="labeled training paragraphs per library")
    p.add_argument("--test-per-class", type=int, default=100, help="held-out paragraphs per library")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (comma-separated)")
    p.add_argument("--seed", type=int, default=0, help="seed of the task's draw")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "ptft-bench-user-job"))
    p.add_argument("--csv", default=None, help="default benchmarks/results/user_job_cpu.csv; '' = none")
    p.add_argument("--note", default="", help="free text stored on every row (e.g. 'shared machine')")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    libraries = args.libraries.split(",")
    sizes = build_job(libraries, args.per_class, args.test_per_class, args.seed, out)
    print(f"corpus: {sizes['corpus_documents']:,} paragraphs of {libraries}; task: "
          f"{sizes['train_examples']} train / {sizes['test_examples']} test")  # fmt: skip
    prep, run = out / "prep", out / "run"
    for old in [prep, run, *out.glob("ft-*")]:  # a fresh job each time: nothing resumed or reused
        shutil.rmtree(old, ignore_errors=True)
    prepare_s = ptft("prepare", str(out / "corpus.jsonl"), "--out", str(prep), "--no-progress")
    model = ["--model", args.model] if args.model else []
    sets = [x for kv in [f"max_time_s={args.budget_s:g}", *args.set] for x in ("--set", kv)]
    ptft("pretrain", *model, "--data", str(prep), *sets, "--out", str(run), "--no-progress")
    summary = json.loads((run / "summary.json").read_text())
    prepared = json.loads((prep / "report.json").read_text())
    device = torch.device("cpu")
    common = {**sizes, **environment(device), "cpu_model": cpu_model(), "python": platform.python_version(),
              "classes": len(libraries), "model": summary["model"], "pretrain_budget_s": args.budget_s,
              "pretrain_steps": summary["steps"], "pretrain_eval_loss": summary["eval_loss"],
              "unigram_entropy": summary["unigram_entropy"], "pretrain_seconds": summary["train_seconds"],
              "prepare_seconds": prepare_s, "prepared_documents": prepared["docs_out"],
              "libraries": " ".join(f"{lib}={metadata.version(lib)}" for lib in libraries),
              "pretrain_sets": " ".join(args.set), "note": args.note}  # fmt: skip
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for setting in ("pretrained", "scratch"):
            ft = out / f"ft-{setting}-{seed}"
            init = ["--init", "random"] if setting == "scratch" else []
            took = ptft("finetune", "--model", str(run / "final"), "--task", "cls", "--train", str(out / "train.csv"),
                        "--eval", str(out / "test.csv"), "--seed", str(seed), *init, "--out", str(ft),
                        "--no-progress")  # fmt: skip
            report = json.loads((ft / "best" / "task.json").read_text())
            bow = report["baselines"]["bag of words (logistic regression)"]
            rows.append({**common, "setting": setting, "seed": seed, "finetune_seconds": took,
                         "accuracy": report["eval_metrics"]["accuracy"],
                         "macro_f1": report["eval_metrics"]["macro_f1"], "bow_accuracy": bow["accuracy"],
                         "bow_macro_f1": bow["macro_f1"],
                         "majority_accuracy": report["baselines"]["majority class"]["accuracy"]})  # fmt: skip
    print(f"pre-training: {summary['model']}, {summary['steps']:,} steps in {summary['train_seconds']:.0f} s, "
          f"eval loss {summary['eval_loss']:.3f} (unigram {summary['unigram_entropy']:.3f})")  # fmt: skip
    for setting in ("pretrained", "scratch"):
        acc = [r["accuracy"] for r in rows if r["setting"] == setting]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"  {setting:<10} accuracy {100 * statistics.mean(acc):.1f} ± {100 * spread:.1f} %")
    print(f"  bag of words accuracy {100 * rows[0]['bow_accuracy']:.1f} %")
    gain = statistics.mean(r["accuracy"] for r in rows if r["setting"] == "pretrained") - statistics.mean(
        r["accuracy"] for r in rows if r["setting"] == "scratch"
    )
    print(f"  transfer effect {100 * gain:+.1f} points")
    if args.csv != "":
        path = write_csv(rows, Path(args.csv) if args.csv else RESULTS_DIR / "user_job_cpu.csv", FIELDS)
        print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
