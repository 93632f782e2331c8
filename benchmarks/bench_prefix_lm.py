"""Does a prefix LM beat a causal LM on the suffix tokens at equal steps? (gpt-tiny, embedded corpus)

Every run goes through the library's :class:`~ptft_fast.train.trainer.Trainer` — what
``ptft pretrain --objective clm|prefix-lm`` runs, document-aware attention (its default) — with the
same model initialisation (seed 0), the same packed rows in the same order, rows × positions,
learning rate and schedule; only the objective (and its prefix split) differs. Settings:

- ``causal``: ``--objective clm`` (every token after a document's first scored).
- ``prefix-uniform``: ``--objective prefix-lm`` as shipped (prefix uniform in [1, n - 1] per document).
- ``prefix-half``: ``prefix_fraction=0.5`` (the prefix is half of each document piece).
- ``prefix-mix``: ``prefix_lm_causal_share=0.5``: half the documents drawn as causal-LM sequences
  (a 1-token prefix), the rest prefix-LM ones — the mix of causal and prefix-LM sequences in one
  batch of UniLM (Dong et al., 2019) and of UL2's causal/prefix modes (Tay et al., 2022); still a
  prefix LM at evaluation.

Evaluation (the same tokens for every model): each held-out document (eval shards, its end token
appended as in training) cut into ``seq_len`` windows; every window scored at every prefix split
p in [1, n - 1] (``eval_split=all``: the expectation under the uniform split, token-weighted) and at
p = round(f·n) for f = 0.25, 0.5, 0.75. The loss is the mean cross-entropy of the suffix tokens
(positions >= p). A prefix-LM model reads the prefix bidirectionally (``suffix_loss``) and, for
comparison, causally (``causal_read_loss``); the causal LM reads causally.

Checks that the prefix LM is one end to end (the run stops if one fails): every training and
evaluation forward of a prefix-lm run gets a ``prefix_mask``, a clm run's none; on the trained
model, altering the last prefix token changes the logits at position 0 under prefix attention
and not under causal reading, and altering a suffix token changes no prefix position.

One CSV row per run, eval split and reading, appended to ``benchmarks/results/prefix_lm_cpu.csv``
with commit, device, CPU model and versions. One intra-op thread (the machine is shared).

Run: ``python -m ptft_fast.benchmarks.bench_prefix_lm --steps 2000,8000 --layers 2,4``.
Quick check: ``--steps 50 --settings causal,prefix-uniform``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptft_fast.benchmarks.harness import RESULTS_DIR, environment, write_csv
from ptft_fast.data.shards import TokenShards
from ptft_fast.utils.device import cpu_model

SETTINGS = {  # name -> (objective, TrainConfig overrides)
    "causal": ("clm", {}),
    "prefix-uniform": ("prefix-lm", {}),
    "prefix-half": ("prefix-lm", {"prefix_fraction": 0.5}),
    "prefix-mix": ("prefix-lm", {"prefix_lm_causal_share": 0.5}),
}
FRACTIONS = (0.25, 0.5, 0.75)
FIELDS = ["setting", "objective", "layers", "steps", "prefix_fraction", "prefix_lm_causal_share",
          "eval_split", "suffix_loss", "causal_read_loss", "suffix_tokens", "final_train_loss",
          "label_tokens_per_step", "train_seconds", "seq_len", "micro_batch_size", "lr", "threads",
          "prefix_mask_calls", "note", "device", "cpu_model", "torch", "numpy", "python", "commit",
          "timestamp"]  # fmt: skip


def model_config_file(folder: Path, layers: int) -> str:
    """gpt-tiny with ``layers`` layers as a ptft config.json (2: the preset name itself)."""
    if layers == 2:
        return "gpt-tiny"
    from ptft_fast.models.config import ModelConfig

    cfg = dataclasses.replace(ModelConfig.from_name("gpt-tiny"), num_layers=layers)
    path = folder / f"gpt-tiny-{layers}l.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg)))
    return str(path)


def train(out: Path, data: Path | None, model: str, setting: str, steps: int, args) -> tuple[nn.Module, dict]:
    """One Trainer run of ``setting``; the trained model (eval mode) and the run summary. Counts
    the model's forwards that got a prefix_mask (training and evaluation)."""
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.trainer import Trainer

    objective, extra = SETTINGS[setting]
    if data is not None:
        shutil.copytree(data, out / "data")  # the prepared shards and tokenizer: the same for every run
    cfg = TrainConfig(model=model, objective=objective, out=str(out), seq_len=args.seq_len,
                      micro_batch_size=args.batch, max_steps=steps, lr=args.lr, eval_batches=1,
                      eval_every=0, save_every=0, plot=False, progress=False, cpu_threads=1,
                      **extra)  # fmt: skip
    trainer = Trainer(cfg)
    calls = {"all": 0, "prefix": 0, "train": 0, "labels": 0}

    def count(module, _args, kwargs):
        calls["all"] += 1
        calls["prefix"] += kwargs.get("prefix_mask") is not None
        if module.training:
            calls["train"] += 1
            calls["labels"] += int((kwargs["labels"][:, 1:] != -100).sum())

    hook = trainer.model.register_forward_pre_hook(count, with_kwargs=True)
    summary = trainer.run()
    hook.remove()
    want = calls["all"] if objective == "prefix-lm" else 0
    if calls["prefix"] != want or calls["all"] == 0:
        raise RuntimeError(
            f"{setting}: {calls['prefix']} of {calls['all']} forwards got a prefix_mask, want {want}"
        )
    summary["prefix_mask_calls"] = f"{calls['prefix']}/{calls['all']}"
    summary["label_tokens_per_step"] = round(calls["labels"] / calls["train"], 1)
    return trainer.model.eval(), summary


def eval_windows(shards, seq_len: int) -> list[np.ndarray]:
    """Each held-out document with its end token, cut into ``seq_len`` windows of >= 4 tokens."""
    eos = shards.tokenizer().eos_id
    out = []
    for doc in shards.documents():
        ids = np.concatenate([np.asarray(doc, dtype=np.int64), [eos]])
        out += [ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids) - i >= 4]
    return out


def splits(windows: list[np.ndarray]) -> dict[str, list[tuple[int, int]]]:
    """eval split name -> [(window, prefix length)]: every p in [1, n - 1], or round(f·n)."""
    out = {"all": [(w, p) for w, ids in enumerate(windows) for p in range(1, len(ids))]}
    for f in FRACTIONS:
        out[str(f)] = [(w, min(max(1, round(f * len(ids))), len(ids) - 1)) for w, ids in enumerate(windows)]
    return out


@torch.no_grad()
def suffix_loss(model: nn.Module, windows, pairs, prefix: bool, rows: int = 256) -> tuple[float, int]:
    """Mean cross-entropy of the suffix tokens (positions >= p) over ``pairs`` (window, p); the
    prefix read bidirectionally when ``prefix``, else causally; and the number of tokens."""
    total, count = 0.0, 0
    for i in range(0, len(pairs), rows):
        chunk = pairs[i : i + rows]
        t = max(len(windows[w]) for w, _ in chunk)
        ids = torch.zeros(len(chunk), t, dtype=torch.int64)
        mask = torch.zeros(len(chunk), t, dtype=torch.int64)
        ends = torch.tensor([p for _, p in chunk])
        for r, (w, _) in enumerate(chunk):
            ids[r, : len(windows[w])] = torch.from_numpy(windows[w])
            mask[r, : len(windows[w])] = 1
        in_prefix = torch.arange(t)[None] < ends[:, None]
        kw = {"prefix_mask": in_prefix & mask.bool()} if prefix else {}
        logits = model(ids, attention_mask=mask, **kw).logits[:, :-1].float()
        scored = (mask.bool() & ~in_prefix)[:, 1:]
        loss = nn.functional.cross_entropy(logits[scored], ids[:, 1:][scored], reduction="sum")
        total, count = total + float(loss), count + int(scored.sum())
    return total / count, count


@torch.no_grad()
def check_bidirectional(model: nn.Module, window: np.ndarray) -> None:
    """On the trained prefix LM: the last prefix token reaches position 0 only under prefix
    attention; a suffix token never reaches a prefix position. Raises if not."""
    ids = torch.from_numpy(window[:16])[None]
    p = 8
    prefix = (torch.arange(16) < p)[None]

    def logits(x, **kw):
        return model(x, **kw).logits[0]

    later = ids.clone()
    later[0, p - 1] = (later[0, p - 1] + 1) % model.config.vocab_size
    suffix = ids.clone()
    suffix[0, p + 2] = (suffix[0, p + 2] + 1) % model.config.vocab_size
    seen = (logits(later, prefix_mask=prefix)[0] - logits(ids, prefix_mask=prefix)[0]).abs().max()
    causal = (logits(later)[0] - logits(ids)[0]).abs().max()
    leak = (logits(suffix, prefix_mask=prefix)[:p] - logits(ids, prefix_mask=prefix)[:p]).abs().max()
    if not (seen > 1e-4 and causal == 0 and leak == 0):
        raise RuntimeError(
            f"prefix attention check failed: seen {seen:.2e}, causal {causal:.2e}, leak {leak:.2e}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="2000,8000", help="comma-separated step budgets (one full run each)")
    p.add_argument("--layers", default="2", help="comma-separated model depths (gpt-tiny, 64 wide)")
    p.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}"
    )
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="rows per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--note", default="", help="free text stored on every row (e.g. 'shared machine')")
    p.add_argument("--csv", default=str(RESULTS_DIR / "prefix_lm_cpu.csv"))
    args = p.parse_args()
    torch.set_num_threads(1)
    env = {**environment(torch.device("cpu")), "cpu_model": cpu_model(), "numpy": np.__version__,
           "python": platform.python_version(), "note": args.note, "seq_len": args.seq_len,
           "micro_batch_size": args.batch, "lr": args.lr, "threads": 1}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_prefix_lm_") as tmp:
        tmp, data = Path(tmp), None
        for layers in (int(x) for x in args.layers.split(",")):
            model_name = model_config_file(tmp, layers)
            for steps in (int(x) for x in args.steps.split(",")):
                for setting in args.settings.split(","):
                    out = tmp / f"{setting}-{layers}-{steps}"
                    model, summary = train(out, data, model_name, setting, steps, args)
                    data = data or out / "data"
                    windows = eval_windows(TokenShards(data / "eval"), args.seq_len)
                    objective, extra = SETTINGS[setting]
                    if objective == "prefix-lm":
                        check_bidirectional(model, windows[0])
                    rows = []
                    for split, pairs in splits(windows).items():
                        loss, n = suffix_loss(model, windows, pairs, prefix=objective == "prefix-lm")
                        causal = suffix_loss(model, windows, pairs, prefix=False)[0]
                        rows.append({**env, **extra, "setting": setting, "objective": objective,
                                     "layers": layers, "steps": steps, "eval_split": split,
                                     "suffix_loss": round(loss, 4), "causal_read_loss": round(causal, 4),
                                     "suffix_tokens": n, "final_train_loss": summary["final_train_loss"],
                                     "label_tokens_per_step": summary["label_tokens_per_step"],
                                     "train_seconds": summary["train_seconds"],
                                     "prefix_mask_calls": summary["prefix_mask_calls"]})  # fmt: skip
                    write_csv(rows, args.csv, FIELDS)
                    print(f"{setting:15s} layers={layers} steps={steps:5d} " + "  ".join(
                        f"{r['eval_split']}={r['suffix_loss']:.3f}/{r['causal_read_loss']:.3f}" for r in rows
                    ), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
