"""Batch sources: a restored state yields exactly the batches of an uninterrupted source; the
sequence-length schedule changes the model length; unigram entropy."""

import math

import numpy as np
import pytest
import torch

from ptft_fast.data.shards import TokenShards
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource, unigram_entropy

CASES = [("mlm", "wordpiece"), ("electra", "wordpiece"), ("clm", "bpe"), ("prefix-lm", "bpe")]
CASES += [("span", "unigram"), ("infill", "bpe")]


def _source(objective, kind, run_data):
    shards = TokenShards(run_data(kind) / "data" / "train")
    return BatchSource(objective, shards, shards.tokenizer(), TrainConfig(objective=objective), seed=7)


@pytest.mark.parametrize(("objective", "kind"), CASES)
def test_state_roundtrip_gives_the_same_batches(objective, kind, run_data):
    a = _source(objective, kind, run_data)
    for _ in range(3):
        a.next(4, 32)
    state = a.state_dict()
    expected = [a.next(4, 32) for _ in range(2)]
    b = _source(objective, kind, run_data)
    b.load_state_dict(state)
    for want, got in zip(expected, [b.next(4, 32) for _ in range(2)]):
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), k


@pytest.mark.parametrize(("objective", "kind"), [("mlm", "wordpiece"), ("span", "unigram"), ("clm", "bpe")])
def test_seq_len_switch(objective, kind, run_data):
    src = _source(objective, kind, run_data)
    assert src.next(2, 32)["input_ids"].shape == (2, 32)
    assert src.next(2, 64)["input_ids"].shape == (2, 64)


def test_unigram_entropy(run_data):
    shards = TokenShards(run_data("wordpiece") / "data" / "train")
    v = shards.tokenizer().vocab_size
    counts = np.bincount(np.concatenate(list(shards.documents())).astype(np.int64), minlength=v)
    p = counts[counts > 0] / counts.sum()
    h = unigram_entropy(shards, v)
    assert h == pytest.approx(float(-(p * np.log(p)).sum()))
    assert 0 < h < math.log(v)
