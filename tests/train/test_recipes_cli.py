"""Every pre-training recipe runs from ``ptft pretrain`` on the embedded corpus with the tiny
presets and its loss goes down in a few dozen steps (statistics of each recipe's batches:
tests/data/test_recipe_statistics.py)."""

import json

import pytest
from safetensors.torch import load_file

from ptft_fast.cli import main

STEPS = 30
# model, objective, tokenizer kind, extra settings
RECIPES = [
    ("bert-tiny-cpu", "mlm+nsp", "wordpiece", {}),
    ("bert-tiny-cpu", "mlm", "wordpiece", {"mask_strategy": "whole_word"}),
    ("bert-tiny-cpu", "spanbert", "wordpiece", {}),
    ("bert-tiny-cpu", "electra", "wordpiece", {"electra_generator_size": 0.25}),
    ("t5-tiny", "seq2seq-mlm", "unigram", {}),
    ("t5-tiny", "seq2seq-prefix-lm", "unigram", {}),
    ("t5-tiny", "deshuffle", "unigram", {}),
    ("bart-tiny", "infill", "bpe", {"bart_noise": "mask"}),
    ("bart-tiny", "infill", "bpe", {"bart_noise": "delete"}),
    ("bart-tiny", "infill", "bpe", {"bart_noise": "rotate,infill"}),
]


def _run(out, model, objective, extra):
    sets = dict(seq_len=64, micro_batch_size=8, max_steps=STEPS, lr="3e-3", log_every=5, eval_every=0)
    sets.update(save_every=0, eval_batches=2, plot="false", **extra)
    argv = ["pretrain", "--model", model, "--objective", objective, "--out", str(out), "--no-progress"]
    assert main(argv + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("model", "objective", "kind", "extra"), RECIPES, ids=lambda x: str(x))
def test_recipe_trains_from_the_cli(model, objective, kind, extra, new_run):
    out = new_run(kind)
    rows = _run(out, model, objective, extra)
    train = [r for r in rows if r["kind"] == "train"]
    losses = [r["loss"] for r in train]
    assert len(losses) == STEPS // 5
    assert sum(losses[-2:]) / 2 < losses[0] - 0.3, losses
    final = (out / "final").iterdir()
    names = {p.name for p in final}
    if objective == "spanbert":  # the SBO term is logged and learns too
        sbo = [r["sbo_loss"] for r in train]
        assert sum(sbo[-2:]) / 2 < sbo[0] - 0.3, sbo
        assert "sbo_head.safetensors" in names
    if objective == "mlm+nsp":
        assert all(0 < r["nsp_loss"] < 2 for r in train)
        ev = [r for r in rows if r["kind"] == "eval"][-1]
        assert 0.0 <= ev["nsp_accuracy"] <= 1.0
        config = json.loads((out / "final" / "config.json").read_text())
        assert config["architectures"] == ["BertForPreTraining"]  # the NSP head is exported
    if objective == "electra":  # a quarter-width generator: 64 → 16 wide, one head
        gen = load_file(out / "final" / "electra_generator.safetensors")
        assert gen["project.weight"].shape == (16, 64)
        assert gen["dense.weight"].shape == (64, 16)


def test_recipe_settings_are_checked(tmp_path, capsys):
    base = ["pretrain", "--out", str(tmp_path / "r"), "--model", "bert-tiny-cpu"]
    assert main([*base, "--objective", "spanbert", "--set", "mask_strategy=token"]) == 2
    assert "objective 'spanbert' masks spans" in capsys.readouterr().err
    assert main([*base, "--model", "bart-tiny", "--objective", "infill", "--set", "bart_noise=shuffle"]) == 2
    assert "bart_noise must be a comma list of mask|delete|infill|permute|rotate" in capsys.readouterr().err
    assert main([*base, "--set", "mask_strategy=words"]) == 2
    assert "mask_strategy must be one of token|whole_word|span" in capsys.readouterr().err
    assert main([*base, "--model", "roberta-tiny", "--objective", "mlm+nsp"]) == 2
    assert "objective='mlm+nsp' trains bert models" in capsys.readouterr().err
