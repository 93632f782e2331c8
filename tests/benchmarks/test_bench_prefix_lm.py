"""The prefix-LM study's evaluation pieces: every split of every window, the suffix loss against
the model's own loss on the same tokens, and the prefix-attention check failing on a model that
ignores the prefix mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptft_fast.benchmarks import bench_prefix_lm as bench
from ptft_fast.models import build_model
from ptft_fast.models.config import ModelConfig


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name("gpt-tiny")).eval()


def test_splits_cover_every_prefix_and_the_fixed_fractions():
    windows = [np.arange(10), np.arange(4)]
    s = bench.splits(windows)
    assert s["all"] == [(0, p) for p in range(1, 10)] + [(1, p) for p in range(1, 4)]
    assert s["0.5"] == [(0, 5), (1, 2)] and s["0.25"] == [(0, 2), (1, 1)] and s["0.75"] == [(0, 8), (1, 3)]


@pytest.mark.parametrize("prefix", [True, False])
def test_suffix_loss_equals_the_models_loss_on_the_suffix_tokens(prefix):
    model = _model()
    gen = torch.Generator().manual_seed(1)
    windows = [torch.randint(0, 1000, (n,), generator=gen).numpy() for n in (16, 9)]
    pairs = [(0, 5), (1, 3), (0, 12)]
    got, n = bench.suffix_loss(model, windows, pairs, prefix=prefix, rows=2)  # two chunks, padded
    total, count = 0.0, 0
    for w, p in pairs:  # one unpadded sequence at a time, the model's own shifted loss
        ids = torch.from_numpy(windows[w])[None]
        labels = ids.clone()
        labels[0, :p] = -100
        kw = {"prefix_mask": (torch.arange(ids.shape[1]) < p)[None]} if prefix else {}
        with torch.no_grad():
            total += float(model(ids, labels=labels, **kw).loss) * (ids.shape[1] - p)
        count += ids.shape[1] - p
    assert n == count and got == pytest.approx(total / count, abs=1e-5)


def test_the_prefix_attention_check_fails_on_a_causal_reading(monkeypatch):
    model = _model()
    window = np.arange(20) + 5
    bench.check_bidirectional(model, window)  # random weights: the prefix is attended both ways
    forward = type(model).forward

    def causal(self, *args, prefix_mask=None, **kw):
        return forward(self, *args, **kw)

    monkeypatch.setattr(type(model), "forward", causal)
    with pytest.raises(RuntimeError, match="prefix attention check failed"):
        bench.check_bidirectional(model, window)
