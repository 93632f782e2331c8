"""Generation with prefix- and prompt-tuned ptft_fast models: the KV cache gives the tokens of
re-running the whole sequence, and independent oracles give the same tokens.

Oracles: prompt tuning = transformers' greedy ``generate`` on ``inputs_embeds`` = [soft prompt;
prompt embeddings] of the exported base model; prefix tuning (GPT-2) = the base model on
[context; prompt] with the prompt's positions restarting at 0, where the prefix holds the
context's keys/values.
"""

from __future__ import annotations

import pytest
import torch
from installed import import_or_skip

from ptft_fast.generate import GenerationConfig, generate, left_pad
from ptft_fast.models import from_name
from ptft_fast.models.blocks import embed_scale
from ptft_fast.peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

FAMILIES = ["gpt-tiny", "t5-tiny", "bart-tiny"]
P = 4  # virtual tokens
NEW = 8  # generated tokens


def base(name):
    torch.manual_seed(0)
    # a wider init gives peaked next-token distributions (no argmax near-ties between paths)
    return from_name(name, initializer_range=0.2).eval()


def tuned(name, method):
    torch.manual_seed(1)
    if method == "prefix":
        return get_peft_model(base(name), "prefix", PrefixTuningConfig(num_virtual_tokens=P)).eval()
    return get_peft_model(base(name), "prompt", PromptTuningConfig(num_virtual_tokens=P)).eval()


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in (5, 9, 2)]


@pytest.mark.parametrize(
    "cfg",
    [GenerationConfig(max_new_tokens=NEW), GenerationConfig(max_new_tokens=6, num_beams=3)],
    ids=["greedy", "beam"],
)
@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("name", FAMILIES)
def test_cache_matches_no_cache(name, method, cfg):
    m = tuned(name, method)
    ids, mask = left_pad(prompts(), 0)
    with_cache = generate(m, ids, mask, cfg, use_cache=True)
    assert torch.equal(with_cache, generate(m, ids, mask, cfg, use_cache=False))
    plain = generate(base(name), ids, mask, cfg)
    assert not torch.equal(with_cache, plain)  # the adapter is in effect


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("name", FAMILIES)
def test_left_padded_batch_equals_each_prompt_alone(name, method):
    m = tuned(name, method)
    cfg = GenerationConfig(max_new_tokens=NEW)
    ids, mask = left_pad(prompts(), 0)
    batched = generate(m, ids, mask, cfg)
    for row, p in zip(batched, prompts(), strict=True):
        assert torch.equal(row, generate(m, torch.tensor([p]), config=cfg)[0])


HF_CLASSES = {
    "gpt-tiny": "GPT2LMHeadModel",
    "t5-tiny": "T5ForConditionalGeneration",
    "bart-tiny": "BartForConditionalGeneration",
}


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_tuning_equals_hf_generate_on_inputs_embeds(name, use_cache, tmp_path):
    transformers = import_or_skip("transformers")
    from ptft_fast.hf import save_pretrained

    save_pretrained(base(name), tmp_path)
    hf = getattr(transformers, HF_CLASSES[name]).from_pretrained(tmp_path).eval()
    m = tuned(name, "prompt")
    cfg = m.config
    eos, pad = cfg.eos_token_id, cfg.pad_token_id if cfg.pad_token_id is not None else 0
    hf.generation_config = transformers.GenerationConfig(  # replaced whole: no forced eos (BART)
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=cfg.bos_token_id,
        decoder_start_token_id=cfg.decoder_start_token_id,
    )
    soft = m.soft_prompt.detach() * embed_scale(cfg)  # ptft scales the looked-up rows, prompt included
    ids, mask = left_pad(prompts(), pad)
    ours_cfg = GenerationConfig(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad)
    ours = generate(m, ids, mask, ours_cfg, use_cache=use_cache)
    for row, p in zip(ours, prompts(), strict=True):
        with torch.no_grad():
            embeds = torch.cat([soft, hf.get_input_embeddings()(torch.tensor(p))])[None]
            ref = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2]))
        ref = ref[0, 1:] if cfg.is_encoder_decoder else ref[0]  # drop the decoder start token
        assert torch.equal(row[: len(ref)], ref) and (row[len(ref) :] == pad).all()


@torch.no_grad()
def _context_prefix(m, context: list[int]) -> None:
    """Load the prefix with the base GPT-2's keys/values of ``context`` (P tokens at 0..P-1)."""
    cache = m.model(torch.tensor([context]), use_cache=True).cache  # plain pass: no prefix attached
    kv = [torch.stack([k[0], v[0]], dim=1) for k, v in cache.self_attn]  # (P, 2, H, D) per layer
    m.prefix_encoder.prefix_embedding.weight.copy_(torch.stack(kv, dim=1).reshape(P, -1))


@torch.no_grad()
def _greedy_after_context(model, context: list[int], prompt: list[int]) -> list[int]:
    """Full re-run each step on [context; sequence], the sequence's positions starting at 0."""
    seq = list(prompt)
    for _ in range(NEW):
        ids = torch.tensor([context + seq])
        positions = torch.cat([torch.arange(len(context)), torch.arange(len(seq))])[None]
        seq.append(int(model(ids, position_ids=positions).logits[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_prefix_tuning_gpt_equals_base_on_context(use_cache):
    """A prefix holding a context's keys/values acts exactly like that context prepended with no
    positions taken: the prefix must be attended at every step and must not shift positions."""
    m = tuned("gpt-tiny", "prefix")
    context = torch.randint(3, 1000, (P,), generator=torch.Generator().manual_seed(7)).tolist()
    _context_prefix(m, context)
    ids, mask = left_pad(prompts(), 0)
    ours = generate(m, ids, mask, GenerationConfig(max_new_tokens=NEW), use_cache=use_cache)
    oracle = base("gpt-tiny")
    for row, p in zip(ours, prompts(), strict=True):
        assert row.tolist() == _greedy_after_context(oracle, context, p)


def test_prefix_tuning_t5_trains():
    """T5's relative position bias is widened (zero) over the prefix keys."""
    m = tuned("t5-tiny", "prefix").train()
    x = torch.tensor(prompts()[1:2])
    m(x, labels=x).loss.backward()
    assert m.prefix_encoder.prefix_embedding.weight.grad.abs().sum() > 0
