"""A user's own corpus of many short documents through prepare → pretrain → finetune with the
defaults (DESIGN: whole jobs, not only steps), and the data path's share of the step reported."""

import csv
import json

import pytest

from ptft_fast.cli import main
from ptft_fast.data.corpus import embedded_corpus


@pytest.mark.slow
def test_short_document_corpus_prepare_pretrain_finetune(tmp_path, capsys):
    sentences = [" ".join(s.split()) for d in embedded_corpus() for s in d.split(". ")]
    docs = [s for s in sentences if len(s) >= 40][:3000]  # ~3,000 documents of 1 sentence
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    prep = tmp_path / "prep"
    argv = [str(corpus), "--out", str(prep), "--tokenizer", "wordpiece", "--vocab-size", "2000"]
    assert main(["prepare", *argv, "--workers", "1", "--no-progress", "--min-chars", "20"]) == 0

    run = tmp_path / "run"
    sets = {"max_steps": 20, "seq_len": 64, "micro_batch_size": 16, "eval_every": 0, "save_every": 0}
    argv = ["--model", "bert-tiny-cpu", "--data", str(prep), "--out", str(run), "--no-progress"]
    assert main(["pretrain", *argv, *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]]) == 0
    assert "waiting for data" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 20 and 0.0 <= summary["data_wait_share"] < 1.0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["data_ms"] >= 0 for r in rows if r["kind"] == "train")

    task = tmp_path / "task.csv"  # a labeled set in the user's own column names
    with task.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["doc_id", "body", "topic"])
        for i, t in enumerate(docs[:24]):
            w.writerow([i, t, "a" if "the" in t.split() else "b"])
    out = tmp_path / "ft"
    argv = ["--model", str(run / "final"), "--task", "cls", "--train", str(task), "--eval", str(task)]
    assert main(["finetune", *argv, "--out", str(out), "--no-progress"]) == 0  # columns detected
    printed = capsys.readouterr().out
    assert "text column 'body', label column 'topic' (the only column left besides the text)" in printed
    assert "fine-tuning recipe: lr" in printed
    assert (out / "best" / "task.json").is_file()
