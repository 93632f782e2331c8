"""Parity with the peft library on a tiny random-weight transformers Llama (no downloads):
same adapter weights → same outputs and same gradients for LoRA, (IA)³, prompt and prefix tuning."""

from __future__ import annotations

import copy

import pytest
import torch
from installed import import_or_skip

transformers = import_or_skip("transformers")
peft = import_or_skip("peft")

from ptft_fast.peft import (  # noqa: E402
    IA3Config,
    LoraConfig,
    PrefixTuning,
    PrefixTuningConfig,
    PromptTuning,
    apply_ia3,
    apply_lora,
)

ATOL = 1e-5


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding in the second row
    return ids, mask


def assert_same(out_ref, out_ours, params_ref, params_ours):
    torch.testing.assert_close(out_ours, out_ref, atol=ATOL, rtol=1e-5)
    (out_ref * torch.arange(out_ref.numel()).view_as(out_ref).sin()).sum().backward()
    (out_ours * torch.arange(out_ours.numel()).view_as(out_ours).sin()).sum().backward()
    for a, b in zip(params_ref, params_ours, strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(b.grad.reshape(a.grad.shape), a.grad, atol=ATOL, rtol=1e-4)


def test_lora_parity():
    base = tiny_llama()
    ref = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0
        ),
    )
    names = apply_lora(base, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    assert len(names) == 6
    ref_params, our_params = [], []
    g = torch.Generator().manual_seed(2)
    for n in names:
        rm, om = ref.base_model.model.get_submodule(n), base.get_submodule(n)
        with torch.no_grad():
            om.lora_B.copy_(torch.randn(om.lora_B.shape, generator=g) * 0.1)  # non-zero B: a real update
            rm.lora_B["default"].weight.copy_(om.lora_B)
            rm.lora_A["default"].weight.copy_(om.lora_A)
        ref_params += [rm.lora_A["default"].weight, rm.lora_B["default"].weight]
        our_params += [om.lora_A, om.lora_B]
    ids, mask = batch()
    assert_same(
        ref(input_ids=ids, attention_mask=mask).logits,
        base(ids, attention_mask=mask).logits,
        ref_params,
        our_params,
    )


def test_ia3_parity():
    base = tiny_llama()
    targets, ff = ["k_proj", "v_proj", "down_proj"], ["down_proj"]
    ref = peft.get_peft_model(
        copy.deepcopy(base), peft.IA3Config(target_modules=targets, feedforward_modules=ff)
    )
    names = apply_ia3(base, IA3Config(target_modules=targets, feedforward_modules=ff))
    g = torch.Generator().manual_seed(3)
    ref_params, our_params = [], []
    for n in names:
        rm, om = ref.base_model.model.get_submodule(n), base.get_submodule(n)
        with torch.no_grad():
            om.ia3_l.copy_(1 + 0.2 * torch.randn(om.ia3_l.shape, generator=g))
            rm.ia3_l["default"].copy_(om.ia3_l.view_as(rm.ia3_l["default"]))
        ref_params.append(rm.ia3_l["default"])
        our_params.append(om.ia3_l)
    ids, mask = batch()
    assert_same(
        ref(input_ids=ids, attention_mask=mask).logits,
        base(ids, attention_mask=mask).logits,
        ref_params,
        our_params,
    )


def test_prompt_tuning_parity():
    base = tiny_llama()
    ref = peft.get_peft_model(
        copy.deepcopy(base), peft.PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM")
    )
    ours = PromptTuning(base, 5, init_ids=[4, 9, 11])
    # init from vocabulary text: rows of the embedding, repeated to fill P
    emb = base.get_input_embeddings().weight
    torch.testing.assert_close(ours.soft_prompt.detach(), emb[[4, 9, 11, 4, 9]].detach())
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(ours.soft_prompt)
    ids, mask = batch()
    assert_same(
        ref(input_ids=ids, attention_mask=mask).logits,
        ours(ids, attention_mask=mask).logits,
        [ref.prompt_encoder["default"].embedding.weight],
        [ours.soft_prompt],
    )


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_parity(projection):
    base = tiny_llama()
    ref = peft.get_peft_model(
        copy.deepcopy(base),
        peft.PrefixTuningConfig(
            num_virtual_tokens=3, prefix_projection=projection, encoder_hidden_size=16, task_type="CAUSAL_LM"
        ),
    )
    ours = PrefixTuning(
        base, PrefixTuningConfig(num_virtual_tokens=3, projection=projection, projection_hidden=16)
    )
    enc_ref = ref.prompt_encoder["default"]
    with torch.no_grad():
        ours.prefix_encoder.prefix_embedding.weight.copy_(enc_ref.embedding.weight)
        if projection:
            for i in (0, 2):
                ours.prefix_encoder.prefix_mlp[i].weight.copy_(enc_ref.transform[i].weight)
                ours.prefix_encoder.prefix_mlp[i].bias.copy_(enc_ref.transform[i].bias)
    ids, mask = batch()
    ref_params = [enc_ref.embedding.weight] + (
        [enc_ref.transform[0].weight, enc_ref.transform[2].bias] if projection else []
    )
    our_params = [ours.prefix_encoder.prefix_embedding.weight] + (
        [ours.prefix_encoder.prefix_mlp[0].weight, ours.prefix_encoder.prefix_mlp[2].bias]
        if projection
        else []
    )
    assert_same(
        ref(input_ids=ids, attention_mask=mask).logits,
        ours(ids, attention_mask=mask).logits,
        ref_params,
        our_params,
    )
