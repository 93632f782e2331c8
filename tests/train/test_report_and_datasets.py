"""ptft pretrain --report-to tensorboard (event files read back equal metrics.jsonl) and Hugging
Face datasets input: a save_to_disk folder, parquet and arrow give the same documents (text column
detected or --text-column), a DatasetDict root is a one-line error naming its splits."""

from __future__ import annotations

import json

import pytest
from installed import import_or_skip

from ptft_fast.cli import main
from ptft_fast.train.data import _texts


def test_pretrain_report_to_tensorboard_reads_back(new_run, tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = new_run()
    sets = [x for k, v in {**tiny, "max_steps": 4}.items() for x in ("--set", f"{k}={v}")]
    assert main(["pretrain", "--out", str(out), "--report-to", "tensorboard", *sets]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    train = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
    assert {e.step: e.value for e in acc.Scalars("train/loss")} == pytest.approx(train, rel=1e-6)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [e.value for e in acc.Scalars("eval/eval_loss")] == pytest.approx([r["eval_loss"] for r in evals])


@pytest.fixture
def corpus(tmp_path):
    datasets = import_or_skip("datasets")
    docs = [f"document {i}: the quick brown fox jumps over lazy dog number {i}" for i in range(40)]
    ds = datasets.Dataset.from_dict(
        {"id": list(range(40)), "body": docs, "title": [f"t{i}" for i in range(40)]}
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "c.parquet"))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    return docs, tmp_path


def test_datasets_documents(corpus):
    from ptft_fast.data.hf_datasets import DatasetInputError

    docs, root = corpus
    arrow = next((root / "saved").glob("*.arrow"))
    for path in (root / "saved", root / "c.parquet", arrow):
        assert _texts(str(path), "body") == docs
        assert _texts(str(path), "title") == [f"t{i}" for i in range(40)]
    assert _texts(str(root / "c.parquet")) == docs  # detected: a known text column name
    import datasets

    datasets.Dataset.from_dict({"x": ["a b"], "y": ["c d"]}).to_parquet(str(root / "xy.parquet"))
    with pytest.raises(DatasetInputError, match=r"string columns \['x', 'y'\].*--text-column"):
        _texts(str(root / "xy.parquet"))
    assert _texts(str(root / "xy.parquet"), "y") == ["c d"]
    with pytest.raises(DatasetInputError, match="column 'id' holds"):
        _texts(str(root / "c.parquet"), "id")
    with pytest.raises(DatasetInputError, match="DatasetDict with splits \\['test', 'train'\\]"):
        _texts(str(root / "dict"))


def test_pretrain_on_a_datasets_folder(corpus, tiny, capsys):
    _, root = corpus
    out = root / "run"
    sets = [x for k, v in {**tiny, "max_steps": 2, "vocab_size": 128}.items() for x in ("--set", f"{k}={v}")]
    args = ["pretrain", "--data", str(root / "saved"), "--out", str(out), *sets]
    assert main([*args, "--text-column", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptft pretrain: error: ") and "no column 'nope'" in err and "\n" not in err
    assert main([*args, "--text-column", "body"]) == 0
    key = json.loads((out / "data" / "key.json").read_text())
    assert key["data"]["column"] == "body" and key["data"]["fingerprint"].startswith("sha256:")
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
