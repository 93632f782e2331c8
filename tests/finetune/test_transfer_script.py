"""The transfer script end to end at toy size: pre-train, three fine-tuning settings, CSV rows."""

from __future__ import annotations

import csv
import json

import pytest

from ptft_fast.finetune import docstring_task, transfer


@pytest.mark.slow
def test_transfer_script_runs_all_settings_and_writes_rows(tmp_path, capsys):
    out_csv = tmp_path / "transfer.csv"
    argv = ["--model", "bert-tiny-cpu", "--vocab-size", "512", "--steps", "4", "--finetune-steps", "3", "--train-sizes", "24",
            "--seeds", "0", "--out", str(tmp_path / "run"), "--csv", str(out_csv)]  # fmt: skip
    assert transfer.main(argv) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["setting"] for r in rows] == ["pretrained-full", "random-init-full", "pretrained-lora-r8"]
    full, rand, lora = rows
    assert {r["train_examples"] for r in rows} == {"24"} and {r["pretrain_steps"] for r in rows} == {"4"}
    assert full["trainable"] == rand["trainable"]  # same architecture, both fully trainable
    assert float(full["trainable_pct"]) == 100.0
    assert 0 < float(lora["trainable_pct"]) < 100.0
    assert all(0.0 <= float(r["last_accuracy"]) <= 1.0 for r in rows)
    assert float(full["pretrain_eval_loss"]) > 0
    assert "transfer effect" in capsys.readouterr().out
    # no held-out eval text reaches pre-training (the corpus holds the stdlib docstrings otherwise)
    _, ev, _ = docstring_task()
    corpus = " ".join(
        " ".join(json.loads(ln)["text"].split()) for ln in (tmp_path / "run" / "corpus.jsonl").open()
    )
    assert len(corpus) > 1_000_000 and not [e.text for e in ev if e.text in corpus]


def test_stratified_sample_keeps_label_shares_and_budget_in_steps():
    from collections import Counter

    from ptft_fast.finetune.readers import Example

    pool = [Example(f"t{i}", None, "a" if i < 60 else "b") for i in range(90)]  # 2:1
    sub = transfer.stratified_sample(pool, 30, seed=1)
    assert Counter(e.label for e in sub) == {"a": 20, "b": 10} and len({e.text for e in sub}) == 30
    assert sub != transfer.stratified_sample(pool, 30, seed=2)  # a fresh draw per seed
    assert (
        transfer.stratified_sample(pool, 7, seed=0) and len(transfer.stratified_sample(pool, 7, seed=0)) == 7
    )
    assert transfer.stratified_sample(pool, 500, seed=0) == pool
    assert transfer.epochs_for(670, 400) == 10 and transfer.epochs_for(60, 400) == 100
