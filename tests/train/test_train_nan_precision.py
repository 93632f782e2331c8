"""NaN/inf policy (skip with a warning, stop after N in a row) and the fp16 loss scaler."""

import math

import pytest
import torch
from torch import nn

from ptft_fast.train import trainer as trainer_mod
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.strategy import DynamicLossScaler, TorchStrategy
from ptft_fast.train.trainer import Trainer, TrainingDiverged


def _poison(monkeypatch, bad_steps: set[int], trainer: Trainer):
    real = trainer_mod.loss_sums

    def loss_sums(*args, **kw):
        out = real(*args, **kw)
        if trainer.step in bad_steps:
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(trainer_mod, "loss_sums", loss_sums)


@pytest.fixture
def make_trainer(new_run, tiny):
    return lambda **kw: Trainer(TrainConfig(**{**tiny, "out": str(new_run()), **kw}))


def test_nan_step_is_skipped_with_a_warning(make_trainer, monkeypatch):
    t = make_trainer(max_bad_steps=2)
    _poison(monkeypatch, {1}, t)
    t.train_step()
    before = [p.detach().clone() for p in t.model.parameters()]
    with pytest.warns(UserWarning, match=r"step 1: non-finite loss .* update skipped \(1 in a row"):
        out = t.train_step()
    assert math.isnan(out.loss) and not out.result.stepped
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))  # no update
    t.train_step()  # a good step resets the count
    assert t.bad == 0 and t.step == 3


def test_stops_after_n_bad_steps_in_a_row(make_trainer, monkeypatch):
    t = make_trainer(max_bad_steps=3)
    _poison(monkeypatch, {1, 2, 3, 4}, t)
    t.train_step()
    with pytest.warns(UserWarning), pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        for _ in range(4):
            t.train_step()
    assert t.step == 3  # stopped at the third bad step


def test_dynamic_loss_scaler():
    s = DynamicLossScaler(1024.0, window=2)
    s.update(False)
    assert s.scale == 512.0
    s.update(True)
    s.update(True)
    assert s.scale == 1024.0 and s.good_steps == 0
    tiny = DynamicLossScaler(1.0, window=2)
    with pytest.raises(FloatingPointError, match="loss scale fell below"):
        tiny.update(False)


def test_fp16_overflow_skips_and_halves_then_steps():
    model = nn.Linear(4, 4)
    # the fp16 backward overflows (> 65504) at this scale; a few halvings fix it
    cfg = TrainConfig(precision="fp16", init_loss_scale=2.0**20, warmup_steps=0, schedule="constant")
    strat = TorchStrategy(model, cfg, torch.device("cpu"))
    w0 = model.weight.detach().clone()
    x = torch.randn(8, 4)
    results = []
    for step in range(16):
        with strat.autocast():
            loss = model(x).float().pow(2).sum()
        strat.backward(loss)
        results.append(strat.step(step))
    assert not results[0].stepped and results[1].loss_scale == 2.0**19
    first = next(i for i, r in enumerate(results) if r.stepped)
    assert all(r.loss_scale == 2.0 ** (20 - i) for i, r in enumerate(results[: first + 1]))
    assert all(r.stepped for r in results[first:])
    assert not torch.equal(w0, model.weight)


def test_bf16_autocast_step_runs():
    model = nn.Linear(4, 4)
    strat = TorchStrategy(model, TrainConfig(precision="bf16"), torch.device("cpu"))
    with strat.autocast():
        y = model(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    strat.backward(y.float().sum())
    assert strat.step(0).stepped
