"""The transfer benchmark end to end at toy size: pre-train, three fine-tuning settings with the
CLI's default recipe, CSV rows with commit and device, the plot."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from ptft_fast.benchmarks import bench_transfer
from ptft_fast.finetune import docstring_task
from ptft_fast.finetune.readers import Example


@pytest.mark.slow
def test_bench_transfer_runs_all_settings_and_writes_rows(tmp_path, capsys):
    out_csv = tmp_path / "transfer.csv"
    argv = ["--model", "bert-tiny-cpu", "--pretrain-steps", "4", "--set", "vocab_size=512", "--train-sizes", "24",
            "--seeds", "0", "--threads", "1", "--out", str(tmp_path / "run"), "--csv", str(out_csv)]  # fmt: skip
    assert bench_transfer.main(argv) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["setting"] for r in rows] == ["pretrained", "scratch", "lora"]
    full, scratch, lora = rows
    assert {r["train_examples"] for r in rows} == {"24"} and {r["pretrain_steps"] for r in rows} == {"4"}
    assert float(full["trainable_pct"]) == float(scratch["trainable_pct"]) == 100.0
    assert 0 < float(lora["trainable_pct"]) < 100.0
    assert full["lr"] == scratch["lr"] and float(lora["lr"]) > float(full["lr"])  # the CLI's recipe
    assert int(full["epochs"]) >= 3 and full["batch_size"] == "8"
    assert all(0.0 <= float(r["last_accuracy"]) <= 1.0 for r in rows)
    assert float(full["pretrain_eval_loss"]) > 0 and full["vocab_size"] == "512"
    assert all(r["commit"] and r["cpu_model"] and r["torch"] and r["device"] for r in rows)
    assert "transfer effect" in capsys.readouterr().out
    assert out_csv.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # no held-out eval text reaches pre-training (the corpus holds the stdlib docstrings otherwise)
    _, ev, _ = docstring_task()
    corpus = " ".join(
        " ".join(json.loads(ln)["text"].split()) for ln in (tmp_path / "run" / "corpus.jsonl").open()
    )
    assert len(corpus) > 1_000_000 and not [e.text for e in ev if e.text in corpus]


def test_stratified_sample_keeps_label_shares():
    pool = [Example(f"t{i}", None, "a" if i < 60 else "b") for i in range(90)]  # 2:1
    sub = bench_transfer.stratified_sample(pool, 30, seed=1)
    assert Counter(e.label for e in sub) == {"a": 20, "b": 10} and len({e.text for e in sub}) == 30
    assert sub != bench_transfer.stratified_sample(pool, 30, seed=2)  # a fresh draw per seed
    assert len(bench_transfer.stratified_sample(pool, 7, seed=0)) == 7
    assert bench_transfer.stratified_sample(pool, 500, seed=0) == pool


def test_unknown_setting_is_refused():
    with pytest.raises(SystemExit, match="unknown"):
        bench_transfer.main(["--settings", "pretrained,frozen", "--pretrained", "x"])
