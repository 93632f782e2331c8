"""The work of one batch does not grow with the corpus: a corpus of 60,000 short documents costs
the same Python calls and numpy memory per batch as one of 2,000 (counted, not timed). A per-
document cost that grows with the corpus (the permutation once rebuilt for every document)
multiplies both."""

import sys
import tracemalloc

import numpy as np
import pytest

from ptft_fast.data.shards import TokenShards, write_token_shards
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource

KINDS = {"mlm": "wordpiece", "electra": "wordpiece", "clm": "bpe", "prefix-lm": "bpe"}
KINDS.update({"span": "unigram", "infill": "bpe"})


def _corpus(tmp_path, tok, num_docs: int) -> TokenShards:
    """``num_docs`` documents of 4..40 ordinary tokens (no special ids), one shard."""
    rng = np.random.default_rng(0)
    low = int(np.flatnonzero(~tok.special_mask_table())[0])
    docs = (rng.integers(low, tok.vocab_size, size=rng.integers(4, 41)) for _ in range(num_docs))
    write_token_shards(docs, tok, tmp_path / f"c{num_docs}", shard_tokens=10**9)
    return TokenShards(tmp_path / f"c{num_docs}")


def _cost_per_batch(src: BatchSource, batches: int = 20) -> tuple[float, float]:
    """(Python-level calls per ``next(4, 32)``, peak numpy bytes during them) after a warm-up."""
    for _ in range(3):
        src.next(4, 32)
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    tracemalloc.start()
    sys.setprofile(count)
    try:
        for _ in range(batches):
            src.next(4, 32)
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return calls / batches, peak


@pytest.mark.parametrize("objective", list(KINDS))
def test_batch_cost_does_not_grow_with_the_corpus(objective, run_data, tmp_path):
    tok = TokenShards(run_data(KINDS[objective]) / "data" / "train").tokenizer()
    cfg = TrainConfig(objective=objective, seq_len=32)
    cost = {}
    for n in (2_000, 60_000):
        cost[n] = _cost_per_batch(BatchSource(objective, _corpus(tmp_path, tok, n), tok, cfg, seed=0))
    (calls_small, mem_small), (calls_big, mem_big) = cost[2_000], cost[60_000]
    assert calls_big <= 1.25 * calls_small + 50, cost
    assert mem_big <= 1.5 * mem_small + 65_536, cost


def test_batch_cost_does_not_grow_with_a_long_document(run_data, tmp_path):
    """A 2,000,000-token document packs at the cost of a 20,000-token one per batch (only the
    part in the batch is gathered)."""
    tok = TokenShards(run_data("wordpiece") / "data" / "train").tokenizer()
    low = int(np.flatnonzero(~tok.special_mask_table())[0])
    cost = {}
    for n in (20_000, 2_000_000):
        doc = np.random.default_rng(0).integers(low, tok.vocab_size, size=n)
        write_token_shards([doc], tok, tmp_path / f"d{n}", shard_tokens=10**9)
        src = BatchSource("mlm", TokenShards(tmp_path / f"d{n}"), tok, TrainConfig(seq_len=32), seed=0)
        cost[n] = _cost_per_batch(src)
    (calls_small, mem_small), (calls_big, mem_big) = cost[20_000], cost[2_000_000]
    assert calls_big <= 1.25 * calls_small + 50, cost
    assert mem_big <= 1.5 * mem_small + 65_536, cost
