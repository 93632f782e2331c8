"""The transfer script end to end at toy size: pre-train, three fine-tuning settings, CSV rows."""

from __future__ import annotations

import csv
import json

import pytest

from ptft_fast.finetune import docstring_task, transfer


@pytest.mark.slow
def test_transfer_script_runs_all_settings_and_writes_rows(tmp_path, capsys):
    out_csv = tmp_path / "transfer.csv"
    argv = ["--model", "bert-tiny-cpu", "--vocab-size", "512", "--steps", "4", "--epochs", "1",
            "--seeds", "0", "--out", str(tmp_path / "run"), "--csv", str(out_csv)]  # fmt: skip
    assert transfer.main(argv) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["setting"] for r in rows] == ["pretrained-full", "random-init-full", "pretrained-lora-r8"]
    full, rand, lora = rows
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
