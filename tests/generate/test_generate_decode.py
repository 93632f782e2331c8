"""Generation: KV cache gives the same tokens as re-running the whole sequence; decoding options."""

from __future__ import annotations

import io

import pytest
import torch

from ptft_fast.generate import GenerationConfig, TextStreamer, generate, left_pad
from ptft_fast.generate.logits import repetition_penalty, top_k_filter, top_p_filter
from ptft_fast.models import from_name

FAMILIES = ["gpt-tiny", "t5-tiny", "bart-tiny"]


def model(name):
    torch.manual_seed(0)
    # a wider init gives peaked next-token distributions (no argmax near-ties between paths)
    return from_name(name, initializer_range=0.2).eval()


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (5, 9, 2)]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(max_new_tokens=12),
        GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, seed=3),
        GenerationConfig(max_new_tokens=8, num_beams=3, length_penalty=0.7),
        GenerationConfig(max_new_tokens=8, repetition_penalty=1.5),
    ],
    ids=["greedy", "sample", "beam", "reppen"],
)
def test_cache_matches_no_cache(name, cfg):
    m = model(name)
    ids, mask = left_pad(prompts(), 0)
    with_cache = generate(m, ids, mask, cfg, use_cache=True)
    without = generate(m, ids, mask, cfg, use_cache=False)
    assert with_cache.shape[0] == 3 and 1 <= with_cache.shape[1] <= cfg.max_new_tokens
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize(
    "cfg",
    [GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=6, num_beams=3)],
    ids=["greedy", "beam"],
)
@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_batch_equals_each_prompt_alone(name, cfg, use_cache):
    """Padding must not move a prompt's tokens: GPT-2 positions count real tokens only, and the
    BART encoder's learned positions see the prompt as if it were alone."""
    m = model(name)
    ids, mask = left_pad(prompts(), 0)
    batched = generate(m, ids, mask, cfg, use_cache=use_cache)
    for row, p in zip(batched, prompts(), strict=True):
        alone = generate(m, torch.tensor([p]), config=cfg, use_cache=use_cache)[0]
        assert torch.equal(row[: len(alone)], alone)


def test_greedy_is_argmax_of_full_forward():
    m = model("gpt-tiny")
    ids = torch.tensor([prompts()[0]])
    out = generate(m, ids, config=GenerationConfig(max_new_tokens=5))
    seq = ids
    for _ in range(5):
        nxt = m(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq[:, ids.shape[1] :])


def test_eos_and_stop_sequences_end_rows():
    m = model("gpt-tiny")
    ids, mask = left_pad(prompts(), 0)
    free = generate(m, ids, mask, GenerationConfig(max_new_tokens=10))
    eos = int(free[0, 2])
    j = free[0].tolist().index(eos)  # the row ends at the first occurrence
    out = generate(m, ids, mask, GenerationConfig(max_new_tokens=10, eos_token_id=eos, pad_token_id=-1))
    assert out[0, j] == eos and (out[0, j + 1 :] == -1).all()
    stop = free[1, 3:5].tolist()
    k = next(i for i in range(9) if free[1, i : i + 2].tolist() == stop)
    out = generate(m, ids, mask, GenerationConfig(max_new_tokens=10, stop_sequences=[stop], pad_token_id=-1))
    assert out[1, k : k + 2].tolist() == stop and (out[1, k + 2 :] == -1).all()


def test_repetition_penalty_and_filters():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 0.0]]
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[False, True, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isinf(top_p_filter(probs, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(top_p_filter(probs, 0.81)).tolist() == [[False, False, False, True]]


def test_length_penalty_changes_beam_preference():
    m = model("gpt-tiny")
    ids = torch.tensor([prompts()[1]])
    eos = int(generate(m, ids, config=GenerationConfig(max_new_tokens=6))[0, 1])
    short = generate(
        m, ids, config=GenerationConfig(max_new_tokens=6, num_beams=4, eos_token_id=eos, length_penalty=-2.0)
    )
    long = generate(
        m, ids, config=GenerationConfig(max_new_tokens=6, num_beams=4, eos_token_id=eos, length_penalty=3.0)
    )
    n = lambda t: int((t != 0).sum())  # noqa: E731
    assert n(short) <= n(long)


def test_streamer_prints_row0_text():
    m = model("gpt-tiny")
    buf = io.StringIO()
    s = TextStreamer(lambda toks: " ".join(map(str, toks)), file=buf)
    out = generate(m, torch.tensor([prompts()[0]]), config=GenerationConfig(max_new_tokens=4), streamer=s)
    assert buf.getvalue().strip() == " ".join(map(str, out[0].tolist()))


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="top_p"):
        generate(model("gpt-tiny"), torch.tensor([[1, 2]]), config=GenerationConfig(top_p=0.0))
