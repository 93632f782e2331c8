"""ptft finetune end to end on the shared machinery: kill -9 then --resume latest gives the weights
of an uninterrupted run; --report-to tensorboard writes event files that read back as the metrics
log (wandb / mlflow mocked; missing: a one-line install hint); datasets inputs (save_to_disk folder,
parquet, arrow) train like the same rows in a TSV."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from installed import import_or_skip
from safetensors.torch import load_file

from ptft_fast.cli import main


def rows(n=24):
    words = ("open", "close", "seek", "tell", "load", "dump", "parse", "encode")
    return [(f"{w} item {i} {'file path' if j < 4 else 'json object'}", "io" if j < 4 else "json")
            for i in range(n // 8) for j, w in enumerate(words)]  # fmt: skip


@pytest.fixture
def task_files(tmp_path, make_model_dir, ft_wordpiece):
    base = make_model_dir("bert-tiny-cpu", ft_wordpiece)
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows()))
    return base, train


def argv(base, train, out, *extra):
    return ["finetune", "--model", str(base), "--task", "cls", "--train", str(train), "--eval", str(train),
            "--batch-size", "4", "--max-steps", "16", "--eval-every", "2", "--no-baselines", "--no-progress",
            "--out", str(out), *extra]  # fmt: skip


def train_rows(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def final_weights(out):
    return load_file(out / "checkpoints" / "step_00000016" / "model" / "model.safetensors")


@pytest.mark.slow
def test_kill9_then_resume_latest_gives_the_uninterrupted_weights(tmp_path, task_files):
    base, train = task_files
    ref = tmp_path / "ref"
    assert main(argv(base, train, ref, "--grad-accum", "2")) == 0
    out = tmp_path / "killed"
    env = dict(os.environ, PTFT_TEST_CHECKPOINT_SLEEP="0.4")  # every checkpoint write pauses: time to kill
    proc = subprocess.Popen([sys.executable, "-m", "ptft_fast", *argv(base, train, out, "--grad-accum", "2")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    kill_at = random.Random().randint(5, 12)
    end = time.monotonic() + 240
    while not ((out / "metrics.jsonl").is_file() and max(train_rows(out), default=0) >= kill_at):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert 2 <= int(latest.split("_")[1]) < 16
    assert main([*argv(base, train, out, "--grad-accum", "2"), "--resume", "latest"]) == 0
    got, want = final_weights(out), final_weights(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert train_rows(out) == train_rows(ref)
    card, ref_card = (json.loads((d / "best" / "task.json").read_text()) for d in (out, ref))
    assert card["eval_metrics"] == ref_card["eval_metrics"] and card["dev_metrics"] == ref_card["dev_metrics"]


def test_resume_errors_are_one_line(tmp_path, task_files, capsys):
    base, train = task_files
    assert main([*argv(base, train, tmp_path / "none"), "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptft finetune: error: --resume latest: no checkpoint found") and "\n" not in err
    assert not (tmp_path / "none").exists()


def test_report_to_tensorboard_reads_back(tmp_path, task_files):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, train = task_files
    out = tmp_path / "tb"
    assert main(argv(base, train, out, "--report-to", "tensorboard", "--max-steps", "6")) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert losses == pytest.approx(train_rows(out), rel=1e-6)
    dev = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"dev"' in x]
    assert [e.step for e in acc.Scalars("dev/accuracy")] == [r["step"] for r in dev] == [2, 4, 6]
    assert [e.value for e in acc.Scalars("dev/accuracy")] == pytest.approx([r["accuracy"] for r in dev])


@pytest.mark.parametrize("target", ["wandb", "mlflow"])
def test_report_to_optional_extras(tmp_path, task_files, monkeypatch, capsys, target):
    base, train = task_files
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert main(argv(base, train, tmp_path / "x", "--report-to", target)) == 2
    err = capsys.readouterr().err.strip()
    assert f"pip install 'ptft_fast[{target}]'" in err and "\n" not in err
    monkeypatch.undo()
    logged = []
    fake = types.ModuleType(target)
    if target == "wandb":
        fake.init = lambda **k: logged.append(("init", k))
        fake.log = lambda metrics, step: logged.append((step, metrics))
        fake.finish = lambda: logged.append(("end", None))
    else:
        fake.start_run = lambda **k: logged.append(("init", k))
        fake.log_metrics = lambda metrics, step: logged.append((step, metrics))
        fake.end_run = lambda: logged.append(("end", None))
    monkeypatch.setitem(sys.modules, target, fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    out = tmp_path / target
    assert main(argv(base, train, out, "--report-to", target, "--max-steps", "4")) == 0
    assert logged[0][0] == "init" and logged[-1][0] == "end"
    sent = {s: m["train/loss"] for s, m in logged[1:-1] if "train/loss" in m}
    assert sent == pytest.approx(train_rows(out))


def test_datasets_inputs_train_like_the_tsv(tmp_path, task_files):
    datasets = import_or_skip("datasets")
    base, train = task_files
    ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in rows()], "label": [y for _, y in rows()]})
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "train.parquet"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    cards = {}
    for name, path in (("tsv", train), ("saved", tmp_path / "saved"), ("parquet", tmp_path / "train.parquet"),
                       ("arrow", arrow)):  # fmt: skip
        out = tmp_path / f"o-{name}"
        assert main([*argv(base, path, out, "--max-steps", "4")[:-2], "--out", str(out)]) == 0
        cards[name] = json.loads((out / "best" / "task.json").read_text())
    for name in ("saved", "parquet", "arrow"):
        assert cards[name]["dev_metrics"] == cards["tsv"]["dev_metrics"], name
        assert cards[name]["eval_metrics"] == cards["tsv"]["eval_metrics"], name


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--grad-accum", "0"], "--grad-accum: must be >= 1, got 0"),
        (["--eval-every", "-2"], "--eval-every: must be >= 0, got -2"),
        (["--precision", "fp8"], "--precision: invalid choice"),
        (["--report-to", "comet"], "--report-to: invalid choice"),
        (["--pack", "--peft", "prompt"], "--pack runs examples on the encoder's varlen path"),
    ],
)
def test_loop_options_bad_values_are_one_line(tmp_path, task_files, capsys, extra, says):
    base, train = task_files
    assert main([*argv(base, train, tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptft finetune: error: ") and says in err and "\n" not in err
    assert not (tmp_path / "o").exists()
