"""``ptft finetune`` chooses the kept epoch on a dev split, never on ``--eval``: two eval files that
would favour different epochs give the same kept model; the eval score reported is that of the
kept model; the dev split carved from --train is seeded and reported."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from ptft_fast.cli import main
from ptft_fast.finetune.selection import SplitError, carve_dev
from ptft_fast.hf import save_pretrained
from ptft_fast.models import from_name

IO = ["open", "close", "read", "write", "seek", "tell", "file", "path", "stream", "buffer"]
JSON = ["json", "object", "dump", "load", "parse", "encode", "decode", "dict", "list", "value"]


def _rows(n: int, seed: int, flip: bool = False) -> str:
    """A two-class task file: three words of the class's list plus two from either."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        label = "io" if i % 2 else "json"
        words = r.sample(IO if label == "io" else JSON, 3) + r.sample(IO + JSON, 2)
        r.shuffle(words)
        if flip:
            label = "json" if label == "io" else "io"
        out.append(f"{' '.join(words)}\t{label}")
    return "sentence\tlabel\n" + "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, ft_wordpiece):
    root = tmp_path_factory.mktemp("selection")
    torch.manual_seed(0)
    model = from_name("bert-tiny-cpu", vocab_size=ft_wordpiece.vocab_size, pad_token_id=ft_wordpiece.pad_id)
    save_pretrained(model, root / "bert")
    ft_wordpiece.save(root / "bert")
    (root / "train.tsv").write_text(_rows(48, 1))
    (root / "dev.tsv").write_text(_rows(12, 2))
    (root / "e1.tsv").write_text(_rows(16, 3))
    (root / "e2.tsv").write_text(_rows(16, 3, flip=True))  # E1 with every label flipped
    return root


def _finetune(files, out, capsys, *extra: str) -> dict:
    argv = ["finetune", "--model", str(files / "bert"), "--task", "cls", "--train", str(files / "train.tsv")]
    argv += ["--epochs", "4", "--batch-size", "8", "--lr", "1e-3", "--out", str(out), "--no-progress", *extra]
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    kept = re.search(r"kept epoch (\d+) of (\d+)", text)
    dev = re.search(r"dev score \(chose it\):\s+accuracy=([\d.]+)", text)
    ev = re.search(r"eval score of the kept model:\s+accuracy=([\d.]+)", text)
    assert kept and dev and ev, text
    best = out / "best"
    return {
        "kept": int(kept.group(1)),
        "dev": float(dev.group(1)),
        "eval": float(ev.group(1)),
        "dev_per_epoch": [float(x) for x in re.findall(r"dev accuracy=([\d.]+)", text)],
        "weights": (best / "model.safetensors").read_bytes() + (best / "head.safetensors").read_bytes(),
        "card": json.loads((best / "task.json").read_text()),
        "text": text,
    }


def test_the_eval_file_cannot_change_which_epoch_is_kept(files, tmp_path, capsys):
    dev, e1, e2 = (str(files / name) for name in ("dev.tsv", "e1.tsv", "e2.tsv"))
    r1 = _finetune(files, tmp_path / "r1", capsys, "--dev", dev, "--eval", e1)
    r2 = _finetune(files, tmp_path / "r2", capsys, "--dev", dev, "--eval", e2)
    assert r1["kept"] == r2["kept"] and r1["dev"] == r2["dev"]
    assert r1["weights"] == r2["weights"]
    # ... and each was scored: on a binary task the flipped file's accuracy is 1 - the other's.
    assert r1["eval"] + r2["eval"] == pytest.approx(1.0, abs=1e-6)
    card = r1["card"]
    assert card["dev_metrics"]["epoch"] == r1["kept"]
    assert card["eval_metrics"]["accuracy"] == pytest.approx(r1["eval"], abs=1e-4)
    assert card["eval_file"] == e1 and card["selected_on"].startswith("dev: --dev")
    # The test has teeth: used to choose, E1 and E2 favour different epochs.
    by_e1 = _finetune(files, tmp_path / "s1", capsys, "--dev", e1, "--eval", dev)
    by_e2 = _finetune(files, tmp_path / "s2", capsys, "--dev", e2, "--eval", dev)
    assert by_e1["kept"] != by_e2["kept"], (by_e1["dev_per_epoch"], by_e2["dev_per_epoch"])


def test_the_eval_score_is_that_of_the_kept_model_not_the_last_epoch(files, tmp_path, capsys):
    """With the dev file as --eval too, the eval score must repeat the dev score of the kept epoch."""
    r = _finetune(
        files, tmp_path / "o", capsys, "--dev", str(files / "e2.tsv"), "--eval", str(files / "e2.tsv")
    )
    assert r["dev_per_epoch"][r["kept"] - 1] != r["dev_per_epoch"][-1]  # the kept epoch is not the last
    assert r["eval"] == pytest.approx(r["dev"], abs=1e-6)


def test_without_dev_a_seeded_share_of_train_chooses_and_is_reported(files, tmp_path, capsys):
    r = _finetune(files, tmp_path / "o", capsys, "--eval", str(files / "e1.tsv"))
    assert (
        "dev split (chooses the kept epoch): 0.1 of --train (5 examples, seed 0; 43 left to train on)"
        in r["text"]
    )
    again = _finetune(files, tmp_path / "o2", capsys, "--eval", str(files / "e2.tsv"))
    assert again["weights"] == r["weights"]  # same seed: same split, same kept model, whatever --eval is
    other = _finetune(files, tmp_path / "o3", capsys, "--eval", str(files / "e1.tsv"), "--seed", "1")
    assert "seed 1" in other["text"] and other["weights"] != r["weights"]


def test_carve_dev_is_seeded_disjoint_and_keeps_order():
    items = list(range(50))
    train, dev = carve_dev(items, 0.1, seed=3)
    assert len(dev) == 5 and len(train) == 45 and sorted(train + dev) == items
    assert train == sorted(train) and dev == sorted(dev)
    assert carve_dev(items, 0.1, seed=3) == (train, dev)
    assert carve_dev(items, 0.1, seed=4)[1] != dev
    assert len(carve_dev(items[:3], 0.1, seed=0)[1]) == 1  # at least one dev example
    with pytest.raises(SplitError, match="too few"):
        carve_dev(items[:1], 0.1, seed=0)
