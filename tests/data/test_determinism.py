"""Same corpus and settings → byte-identical tokenizer and shards; same seed → identical losses.

Every check runs in fresh processes: what varied before was the per-process hash seed inside
``tokenizers`` (see ``ptft_fast.data.stable_training``), which one process never shows."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

TRAIN_ALL_KINDS = """
import hashlib
from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer
texts = embedded_corpus()[:40]
for kind, size in (("wordpiece", 2000), ("unigram", 800), ("bpe", 800)):
    tok = train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=size, num_sentinels=10))
    print(kind, hashlib.sha256(tok.to_str().encode()).hexdigest())
"""


def _run(args: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_tokenizer_training_is_byte_identical_across_processes():
    runs = [_run([sys.executable, "-c", TRAIN_ALL_KINDS]) for _ in range(3)]
    assert len(runs[0].splitlines()) == 3
    assert runs[0] == runs[1] == runs[2], runs


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _train_losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def test_two_fresh_runs_with_one_seed_are_identical(tmp_path):
    """Two fresh pre-training runs (tokenizer, shards, model, dropout, masking): same bytes on
    disk for the run data, the same loss at every step."""
    sets = dict(seq_len=32, micro_batch_size=4, max_steps=5, log_every=1, eval_every=0, save_every=0)
    sets.update(eval_batches=1, plot="false", seed=7)
    argv = [sys.executable, "-m", "ptft_fast", "pretrain", "--no-progress"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        _run([*argv, "--out", str(out)])
    data = [_tree_digest(out / "data") for out in outs]
    assert "train/tokenizer.json" in data[0] and "train/shard_00000.bin" in data[0]
    assert data[0] == data[1]
    losses = [_train_losses(out) for out in outs]
    assert [s for s, _ in losses[0]] == [1, 2, 3, 4, 5]
    assert losses[0] == losses[1]
