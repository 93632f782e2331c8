"""Generation and ICL scoring with a prefix LM (``config.prefix_lm``): the prompt is the
bidirectional prefix, encoded once; generated tokens attend causally. Oracles: the model's full
forward with the prompt as ``prefix_mask``; the KV cache = re-running the whole sequence; PEFT
prefix / prompt tuning on top."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptft_fast.finetune.icl import verbalizer_logprobs
from ptft_fast.generate import GenerationConfig, generate, left_pad
from ptft_fast.generate.steppers import DecoderStepper
from ptft_fast.models import from_name
from ptft_fast.peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model


def model(prefix_lm: bool = True):
    torch.manual_seed(0)
    # a wider init gives peaked next-token distributions (no argmax near-ties between paths)
    return from_name("gpt-tiny", initializer_range=0.2, prefix_lm=prefix_lm).eval()


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (5, 9, 2)]


def test_first_step_reads_the_prompt_as_the_prefix():
    """The stepper's first logits are the full forward's with the prompt as prefix_mask, and
    differ from the causal ones of the same weights."""
    m = model()
    ids, mask = left_pad(prompts(), 0)
    with torch.no_grad():
        first = DecoderStepper(m, ids, mask, use_cache=True).first()
        want = m(ids, mask, prefix_mask=mask.bool()).logits[:, -1]
        causal = m(ids, mask).logits[:, -1]
    torch.testing.assert_close(first, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, causal, atol=1e-3)


def test_greedy_is_argmax_of_full_forward_with_the_prompt_as_prefix():
    m = model()
    ids = torch.tensor([prompts()[1]])
    out = generate(m, ids, config=GenerationConfig(max_new_tokens=6))
    seq, n = ids, ids.shape[1]
    with torch.no_grad():
        for _ in range(6):
            prefix = torch.arange(seq.shape[1])[None] < n  # generated tokens are not in the prefix
            nxt = m(seq, prefix_mask=prefix).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq[:, n:])


@pytest.mark.parametrize(
    "cfg",
    [GenerationConfig(max_new_tokens=10), GenerationConfig(max_new_tokens=6, num_beams=3)],
    ids=["greedy", "beam"],
)
def test_cache_matches_no_cache_and_left_padding_does_not_move_a_prompt(cfg):
    m = model()
    ids, mask = left_pad(prompts(), 0)
    with_cache = generate(m, ids, mask, cfg, use_cache=True)
    assert torch.equal(with_cache, generate(m, ids, mask, cfg, use_cache=False))
    for row, p in zip(with_cache, prompts(), strict=True):
        alone = generate(m, torch.tensor([p]), config=cfg)[0]
        assert torch.equal(row[: len(alone)], alone)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_peft_on_a_prefix_lm_keeps_the_prompt_bidirectional(method):
    """Prefix tuning's virtual keys and prompt tuning's soft prompt sit before the prompt; the
    prompt stays bidirectional behind them, with and without the cache."""
    torch.manual_seed(1)
    if method == "prefix":
        m = get_peft_model(model(), "prefix", PrefixTuningConfig(num_virtual_tokens=4)).eval()
    else:
        m = get_peft_model(model(), "prompt", PromptTuningConfig(num_virtual_tokens=4)).eval()
    ids, mask = left_pad(prompts(), 0)
    cfg = GenerationConfig(max_new_tokens=8)
    with_cache = generate(m, ids, mask, cfg, use_cache=True)
    assert torch.equal(with_cache, generate(m, ids, mask, cfg, use_cache=False))
    with torch.no_grad():
        first = DecoderStepper(m, ids, mask, use_cache=False).first()
        causal = m(ids, mask).logits[:, -1]
    assert not torch.allclose(first, causal, atol=1e-3)  # the prefix rule still applies
    # the first prompt token sees the last one (the whole prompt is the prefix) and not the next
    seq = torch.tensor([prompts()[1] + [7, 8]])
    prefix = torch.arange(seq.shape[1])[None] < len(prompts()[1])
    with torch.no_grad():
        base = m(seq, prefix_mask=prefix).logits[0, 0]
        for pos, seen in ((8, True), (9, False)):
            other = seq.clone()
            other[0, pos] += 1
            changed = not torch.equal(m(other, prefix_mask=prefix).logits[0, 0], base)
            assert changed == seen, (pos, changed)


class _Tok:
    """Token ids of space-separated integers (enough for verbalizer_logprobs)."""

    def encode(self, text: str) -> list[int]:
        return [int(w) for w in text.split()]


def test_icl_scores_a_prefix_lm_with_the_prompt_as_prefix():
    m = model()
    prompt, verbalizers = "5 17 99 4 250", ["7 8", "301"]
    got = verbalizer_logprobs(m, _Tok(), prompt, verbalizers, max_positions=64)
    p = [5, 17, 99, 4, 250]
    want = []
    with torch.no_grad():
        for v in ([7, 8], [301]):
            ids = torch.tensor([p + v])
            prefix = torch.arange(ids.shape[1])[None] < len(p)
            logp = F.log_softmax(m(ids, prefix_mask=prefix).logits[0].float(), -1)
            want.append(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(v)))
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)
    causal = verbalizer_logprobs(model(prefix_lm=False), _Tok(), prompt, verbalizers, max_positions=64)
    assert not torch.allclose(got, causal, atol=1e-3)
