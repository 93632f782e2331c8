"""Source mixtures: the sampler honours the weights (shares of tokens) within a binomial bound,
resumes exactly, and ``ptft pretrain --data a:0.7 b:0.3`` reaches it."""

from __future__ import annotations

import numpy as np
import pytest

from ptft_fast.data.mixture import MixtureSampler, MixtureShards, mixture_spec, parse_mixture
from ptft_fast.data.packing import PackedStream
from ptft_fast.data.shards import TokenShards, write_token_shards


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory, wordpiece):
    """Three shard folders with documents of mean length 10, 40 and 5 tokens (several shards)."""
    rng = np.random.default_rng(0)
    out = []
    for i, (n, mean) in enumerate([(300, 10), (80, 40), (500, 5)]):
        docs = [np.full(max(1, int(rng.integers(mean // 2, mean * 3 // 2 + 1))), 100 + i) for _ in range(n)]
        folder = tmp_path_factory.mktemp(f"src{i}")
        write_token_shards(docs, wordpiece, folder, shard_tokens=400)
        out.append(TokenShards(folder))
    return out


def _sources_of(sampler, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, tokens) of the next ``n`` documents."""
    src, tok = np.empty(n, dtype=int), np.empty(n, dtype=int)
    for k in range(n):
        ref, ids = next(sampler)
        src[k] = sampler.shards.locate(ref.shard)[0]
        tok[k] = len(ids)
    return src, tok


def test_document_shares_follow_the_probabilities_within_a_binomial_bound(three_sources):
    weights = [0.5, 0.3, 0.2]
    shards = MixtureShards(three_sources, weights)
    sampler = MixtureSampler(shards, seed=3)
    mean_len = np.array([s.num_tokens / s.num_docs for s in three_sources])
    expected = np.array(weights) / mean_len
    expected /= expected.sum()  # independent of the sampler's code: weights are token shares
    np.testing.assert_allclose(sampler.probs, expected)
    n = 20_000
    src, tok = _sources_of(sampler, n)
    counts = np.bincount(src, minlength=3)
    bound = 4 * np.sqrt(n * expected * (1 - expected))  # 4 binomial standard deviations
    assert np.all(np.abs(counts - n * expected) <= bound), (counts, n * expected, bound)
    token_share = np.bincount(src, weights=tok, minlength=3) / tok.sum()
    np.testing.assert_allclose(token_share, weights, atol=0.02)
    # sources are repeated as often as needed (upsampled), each in its own seeded order
    assert counts[1] > three_sources[1].num_docs


def test_mixture_resumes_exactly(three_sources):
    shards = MixtureShards(three_sources, [0.7, 0.2, 0.1])
    whole = PackedStream(MixtureSampler(shards, seed=1), 32, eos_id=2)
    ref = [whole.next_rows(7) for _ in range(30)]
    part = PackedStream(MixtureSampler(shards, seed=1), 32, eos_id=2)
    for _ in range(11):
        part.next_rows(7)
    state = part.state_dict()
    resumed = PackedStream(MixtureSampler(shards, seed=1), 32, eos_id=2)
    resumed.load_state_dict(state)
    for want in ref[11:]:
        got = resumed.next_rows(7)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    other = MixtureSampler(MixtureShards(three_sources, [0.1, 0.2, 0.7]), seed=1)
    with pytest.raises(ValueError, match="weights"):
        other.load_state_dict(state["sampler"])


def test_parse_mixture():
    assert parse_mixture("a.txt") is None and parse_mixture(None) is None
    assert parse_mixture("a.txt:0.7,b/c.jsonl:0.3") == [("a.txt", 0.7), ("b/c.jsonl", 0.3)]
    pairs = parse_mixture([{"path": "a.txt", "weight": 2}, "b.txt:1"])
    assert pairs == [("a.txt", 2.0), ("b.txt", 1.0)] and mixture_spec(pairs) == "a.txt:2,b.txt:1"
    with pytest.raises(ValueError, match="weight > 0"):
        parse_mixture("a.txt:0.7,b.txt")


def test_pretrain_data_mixture_from_text_files(tmp_path, corpus):
    from ptft_fast.train.config import TrainConfig
    from ptft_fast.train.data import BatchSource, prepare_run_data

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n\n".join(corpus[:40]))
    b.write_text("\n\n".join(corpus[40:]))
    cfg = TrainConfig(data=f"{a}:0.8,{b}:0.2", vocab_size=600, progress=False, seq_len=64)
    data = prepare_run_data(cfg, "wordpiece", tmp_path / "run")
    assert isinstance(data.train, MixtureShards) and data.train.weights == pytest.approx([0.8, 0.2])
    assert not data.eval_is_train and data.eval.num_docs >= 2
    src = BatchSource("mlm", data.train, data.tokenizer, cfg, seed=0)
    assert isinstance(src.stream.sampler, MixtureSampler)
    batch = src.next(4, 64)
    assert batch["input_ids"].shape == (4, 64)
