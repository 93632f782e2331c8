"""The user's-job benchmark end to end at toy size: a corpus from installed libraries' docstrings,
prepare → pretrain (time budget) → finetune pre-trained and --init random through the CLI in fresh
processes, CSV rows with commit and device; held-out paragraphs never reach pre-training."""

from __future__ import annotations

import csv
import json

import pytest

from ptft_fast.benchmarks import bench_user_job


def test_paragraphs_drop_doctests_and_fragments():
    doc = "Short.\n\nA paragraph that has well over eight words\nsplit across two lines.\n\n>>> f(1)\n2"
    assert bench_user_job._paragraphs(doc) == [
        "A paragraph that has well over eight words split across two lines."
    ]


@pytest.mark.slow
def test_user_job_runs_through_the_cli_and_writes_rows(tmp_path, capsys):
    out_csv = tmp_path / "user_job.csv"
    argv = ["--libraries", "numpy,datasets", "--per-class", "8", "--test-per-class", "10", "--seeds", "0",
            "--budget-s", "3", "--out", str(tmp_path / "job"), "--csv", str(out_csv)]  # fmt: skip
    assert bench_user_job.main(argv) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["setting"] for r in rows] == ["pretrained", "scratch"]
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["bow_accuracy"]) <= 1.0
        assert float(r["majority_accuracy"]) == pytest.approx(0.5)  # balanced: 10 + 10 held out
        assert (r["train_examples"], r["test_examples"], r["classes"]) == ("16", "20", "2")
        assert int(r["pretrain_steps"]) > 0 and float(r["pretrain_seconds"]) >= 3.0  # the whole budget
        assert r["commit"] and r["device"] and r["torch"] and "numpy=" in r["libraries"]
    assert "transfer effect" in capsys.readouterr().out
    job = tmp_path / "job"
    held_out = {row["body"] for row in csv.DictReader((job / "test.csv").open())}
    corpus = {json.loads(ln)["text"] for ln in (job / "corpus.jsonl").open()}
    assert len(held_out) == 20 and not held_out & corpus and len(corpus) > 1000
    train = {row["body"] for row in csv.DictReader((job / "train.csv").open())}
    assert train <= corpus and not train & held_out
