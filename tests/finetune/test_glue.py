"""GLUE presets: the task files as GLUE distributes them (fixtures written for these tests, a few
examples per task) and as a datasets export writes them, per-task metrics and scores, the GLUE
average, and the toy run finetune → predict → submission files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptft_fast.cli import main
from ptft_fast.finetune import glue
from ptft_fast.finetune.readers import DataError

GLUE = Path(__file__).parent / "fixtures" / "glue"
FILES = {  # task → (folder, train, eval, test files)
    "cola": ("CoLA", "train.tsv", "dev.tsv", ["test.tsv"]),
    "sst2": ("SST-2", "train.tsv", "dev.tsv", ["test.tsv"]),
    "mrpc": ("MRPC", "train.tsv", "dev.tsv", ["test.tsv"]),
    "qqp": ("QQP", "train.tsv", "dev.tsv", ["test.tsv"]),
    "stsb": ("STS-B", "train.tsv", "dev.tsv", ["test.tsv"]),
    "mnli": (
        "MNLI",
        "train.tsv",
        "dev_matched.tsv",
        ["test_matched.tsv", "test_mismatched.tsv", "diagnostic.tsv"],
    ),
    "qnli": ("QNLI", "train.tsv", "dev.tsv", ["test.tsv"]),
    "rte": ("RTE", "train.tsv", "dev.tsv", ["test.tsv"]),
    "wnli": ("WNLI", "train.tsv", "dev.tsv", ["test.tsv"]),
}
SUBMISSIONS = {"cola": ["CoLA"], "sst2": ["SST-2"], "mrpc": ["MRPC"], "qqp": ["QQP"], "stsb": ["STS-B"],
               "mnli": ["MNLI-m", "MNLI-mm", "AX"], "qnli": ["QNLI"], "rte": ["RTE"], "wnli": ["WNLI"]}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FILES))
def test_presets_read_glue_files(name):
    task = glue.TASKS[name]
    folder, train, _, tests = FILES[name]
    ex = glue.read(task, GLUE / folder / train)
    assert len(ex) >= 6 and all(e.label is not None for e in ex)
    if task.kind == "cls":
        assert {e.label for e in ex} == set(task.labels)
    else:
        assert all(isinstance(e.label, float) for e in ex)
    pair = task.columns[0].text_pair is not None
    assert all((e.text_pair is not None) == pair for e in ex)
    for t in tests:
        assert all(e.label is None for e in glue.read(task, GLUE / folder / t))


def test_cola_without_header_and_mnli_labels():
    cola = glue.read(glue.TASKS["cola"], GLUE / "CoLA" / "train.tsv")
    assert (cola[0].text, cola[0].label) == ("The cat sat on the mat.", "1") and cola[1].label == "0"
    mnli = glue.read(glue.TASKS["mnli"], GLUE / "MNLI" / "train.tsv")
    assert [e.label for e in mnli[:3]] == ["entailment", "contradiction", "neutral"]


def test_datasets_export_with_integer_labels(tmp_path):
    rows = [{"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0, "idx": 0},
            {"premise": "A man sleeps.", "hypothesis": "A man runs.", "label": 2, "idx": 1},
            {"premise": "A man sleeps.", "hypothesis": "He is tired.", "label": -1, "idx": 2}]  # fmt: skip
    path = tmp_path / "mnli.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = glue.read(glue.TASKS["mnli"], path)
    assert [e.label for e in ex] == ["entailment", "contradiction", None]  # datasets' order, -1 = test
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": 7}) + "\n")
    with pytest.raises(DataError, match=r"label '7' is neither a GLUE mnli label"):
        glue.read(glue.TASKS["mnli"], path)
    with pytest.raises(DataError, match="not a GLUE rte file"):
        glue.read(glue.TASKS["rte"], GLUE / "SST-2" / "train.tsv")


def test_task_scores_and_glue_average():
    mrpc = glue.TASKS["mrpc"]  # labels ("0", "1"): index 1 is the positive class
    split = glue.split_scores(mrpc, [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    # TP 2, FP 1, FN 1 → F1 2/3; accuracy 3/5; the task score is their mean
    assert split["f1"] == pytest.approx(2 / 3) and split["accuracy"] == pytest.approx(0.6)
    assert glue.task_scores(mrpc, split)["score"] == pytest.approx((2 / 3 + 0.6) / 2)
    cola = glue.task_scores(
        glue.TASKS["cola"], glue.split_scores(glue.TASKS["cola"], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    )
    assert cola["score"] == pytest.approx(1 / 6)  # MCC (TP 2, TN 1, FP 1, FN 1)
    mnli = glue.TASKS["mnli"]
    s = glue.task_scores(mnli, {"accuracy": 0.8}, {"accuracy": 0.6})
    assert s["accuracy_mm"] == 0.6 and s["score"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="accuracy_mm"):
        glue.task_scores(mnli, {"accuracy": 0.8})
    stsb = glue.split_scores(glue.TASKS["stsb"], [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0])
    assert glue.task_scores(glue.TASKS["stsb"], stsb)["score"] == pytest.approx(
        (stsb["pearson"] + stsb["spearman"]) / 2
    )
    assert glue.glue_average({"cola": 0.2, "mrpc": 0.8, "mnli": 0.5}) == pytest.approx(0.5)


def test_submission_names_and_format(tmp_path):
    mnli = glue.TASKS["mnli"]
    names = [
        glue.submission_name(mnli, f) for f in ("test_matched.tsv", "test_mismatched.tsv", "diagnostic.tsv")
    ]
    assert names == ["MNLI-m", "MNLI-mm", "AX"]
    path = glue.write_submission(tmp_path, "STS-B", ["0", "1"], [4.25, 0.0])
    assert path.read_text() == "index\tprediction\n0\t4.250\n1\t0.000\n"


def _toy_run(tmp_path, make_model_dir, ft_wordpiece, names, capsys):
    """finetune (1 epoch) → predict on every test file → the submission files → ptft glue."""
    base = make_model_dir("bert-tiny-cpu", ft_wordpiece)
    sub = tmp_path / "submission"
    runs = []
    for name in names:
        folder, train, dev, tests = FILES[name]
        d = GLUE / folder
        out = tmp_path / name
        extra = ["--eval-mismatched", str(d / "dev_mismatched.tsv")] if name == "mnli" else []
        rc = main(["finetune", "--glue", name, "--model", str(base), "--train", str(d / train), "--eval", str(d / dev),
                   *extra, "--epochs", "1", "--batch-size", "4", "--max-length", "32", "--out", str(out), "--no-progress"])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        text = capsys.readouterr().out
        first = "baseline training mean" if glue.TASKS[name].kind == "reg" else "baseline majority class"
        assert "score=" in text and first in text and "baseline bag of words" in text
        card = json.loads((out / "best" / "task.json").read_text())
        assert card["glue"] == name and "score" in card["eval_metrics"] and card["baselines"]
        for t in tests:
            assert (
                main(["predict", "--model", str(out / "best"), "--input", str(d / t), "--out", str(sub)]) == 0
            )
        runs.append(str(out / "best"))
    task_files = {n: sorted(SUBMISSIONS[n]) for n in names}
    written = sorted(p.stem for p in sub.glob("*.tsv"))
    assert written == sorted(s for n in names for s in task_files[n])
    for name in names:
        task = glue.TASKS[name]
        for stem in SUBMISSIONS[name]:
            lines = (sub / f"{stem}.tsv").read_text().splitlines()
            test_file = {
                "MNLI-m": "test_matched.tsv",
                "MNLI-mm": "test_mismatched.tsv",
                "AX": "diagnostic.tsv",
            }.get(stem, "test.tsv")
            test_rows = (GLUE / FILES[name][0] / test_file).read_text().splitlines()
            assert lines[0] == "index\tprediction" and len(lines) == len(test_rows)
            index = [ln.split("\t")[0] for ln in lines[1:]]
            assert index == [row.split("\t")[0] for row in test_rows[1:]]  # the test file's own ids
            values = [ln.split("\t")[1] for ln in lines[1:]]
            if task.kind == "cls":
                assert set(values) <= set(task.labels)
            else:
                assert all(0.0 <= float(v) <= 5.0 for v in values)
    capsys.readouterr()
    assert main(["glue", *runs]) == 0
    return runs


def test_glue_toy_run_finetune_predict_submission(tmp_path, make_model_dir, ft_wordpiece, capsys):
    """All nine tasks (~15 s on 2 CPU cores: a tiny BERT, one epoch)."""
    runs = _toy_run(tmp_path, make_model_dir, ft_wordpiece, sorted(FILES), capsys)
    table = capsys.readouterr().out
    assert "GLUE score over 9 task(s):" in table and "missing" not in table
    for name in ("CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"):
        assert any(line.startswith(name) for line in table.splitlines())
    assert main(["glue", runs[0], runs[1]]) == 0
    assert "missing (the official score needs all nine): " in capsys.readouterr().out
    assert main(["glue", runs[0], runs[0]]) == 2
    assert "a second run of GLUE task" in capsys.readouterr().err
