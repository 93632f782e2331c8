"""Parity with the peft library on ptft_fast's own models (saved, loaded by transformers, wrapped
by peft): prompt tuning on BERT, GPT-2, T5 and BART, and prefix tuning on GPT-2 — same virtual
token weights → same logits and the same gradient for them. (LoRA and (IA)³: test_peft_format.)

Prefix tuning differs from peft by design in one respect, which the GPT-2 test aligns by hand:
peft hands the prefix to transformers as a cache of P past tokens, so the real tokens take
positions P..P+T-1; ptft_fast's prefix has no position (the tokens keep 0..T-1, as without it).
For T5/BART peft puts prefixes in the decoder only; ptft_fast in both stacks (docs/peft.md)."""

from __future__ import annotations

import json

import pytest
import torch
from installed import import_or_skip

transformers = import_or_skip("transformers")
peft = import_or_skip("peft")

from ptft_fast.hf import save_pretrained  # noqa: E402
from ptft_fast.models import from_name  # noqa: E402
from ptft_fast.peft import PrefixTuning, PrefixTuningConfig, PromptTuning  # noqa: E402

V, P = 97, 3
TASK_TYPES = {"bert-tiny-cpu": "FEATURE_EXTRACTION", "gpt-tiny": "CAUSAL_LM", "t5-tiny": "SEQ_2_SEQ_LM",
              "bart-tiny": "SEQ_2_SEQ_LM"}  # fmt: skip


def pair(preset, tmp_path):
    """(our model, the same weights in transformers), eval mode, dropout off."""
    torch.manual_seed(0)
    ids = dict(bos_token_id=V - 1, eos_token_id=V - 1) if preset == "gpt-tiny" else {}
    ours = from_name(preset, vocab_size=V, dropout=0.0, attention_dropout=0.0, **ids).eval()
    save_pretrained(ours, tmp_path)
    arch = json.loads((tmp_path / "config.json").read_text())["architectures"][0]
    return ours, getattr(transformers, arch).from_pretrained(tmp_path).eval()


def batch(preset):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V - 1, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    extra = (
        {"decoder_input_ids": torch.randint(3, V - 1, (2, 4), generator=g)}
        if preset in ("t5-tiny", "bart-tiny")
        else {}
    )
    return ids, mask, extra


def same_logits_and_grads(ref_logits, our_logits, ref_param, our_param, rows):
    torch.testing.assert_close(our_logits[rows], ref_logits[rows], atol=1e-4, rtol=1e-4)
    w = torch.randn(ref_logits[rows].shape, generator=torch.Generator().manual_seed(3))
    (ref_logits[rows] * w).sum().backward()
    (our_logits[rows] * w).sum().backward()
    # seq2seq: peft's table has 2P rows, the first P feed the encoder (the rest get no gradient)
    torch.testing.assert_close(our_param.grad, ref_param.grad[: our_param.shape[0]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", sorted(TASK_TYPES))
def test_prompt_tuning_parity(preset, tmp_path):
    ours, hf = pair(preset, tmp_path)
    ref = peft.get_peft_model(hf, peft.PromptTuningConfig(num_virtual_tokens=P, task_type=TASK_TYPES[preset]))
    mine = PromptTuning(ours, P)
    table = ref.prompt_encoder["default"].embedding.weight  # (P, C), seq2seq: (2P, C), the first P used
    with torch.no_grad():
        table[:P].copy_(mine.soft_prompt)
    ids, mask, extra = batch(preset)
    ref_logits = ref(input_ids=ids, attention_mask=mask, **extra).logits
    our_logits = mine(ids, attention_mask=mask, **extra).logits
    if extra:  # encoder-decoder: the prompt sits in the encoder; every decoder position counts
        rows = torch.ones(our_logits.shape[:2], dtype=torch.bool)
    else:  # the prompt positions and the real tokens
        rows = torch.cat([torch.ones(2, P, dtype=torch.bool), mask.bool()], 1)
    same_logits_and_grads(ref_logits, our_logits, table, mine.soft_prompt, rows)


def test_prefix_tuning_parity_gpt2(tmp_path):
    ours, hf = pair("gpt-tiny", tmp_path)
    ref = peft.get_peft_model(hf, peft.PrefixTuningConfig(num_virtual_tokens=P, task_type="CAUSAL_LM"))
    mine = PrefixTuning(ours, PrefixTuningConfig(num_virtual_tokens=P))
    table = ref.prompt_encoder["default"].embedding.weight  # (P, L·2·C): layer-major, keys then values
    with torch.no_grad():
        table.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(4)))
        mine.prefix_encoder.prefix_embedding.weight.copy_(table)
    ids, mask, _ = batch("gpt-tiny")
    positions = torch.arange(ids.shape[1])[None].expand_as(ids) + P  # where peft's cache puts them
    ref_logits = ref(input_ids=ids, attention_mask=mask).logits
    our_logits = mine(ids, attention_mask=mask, position_ids=positions).logits
    same_logits_and_grads(
        ref_logits, our_logits, table, mine.prefix_encoder.prefix_embedding.weight, mask.bool()
    )
    # without the shift, our real tokens keep the positions they have without a prefix
    assert not torch.allclose(
        mine(ids, attention_mask=mask).logits[mask.bool()], ref_logits[mask.bool()], atol=1e-3
    )
