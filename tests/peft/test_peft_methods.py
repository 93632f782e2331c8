"""PEFT methods on ptft_fast models: frozen base, trainable head, exact merge, save/load, drift."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ptft_fast.models import from_name
from ptft_fast.peft import (
    AdapterConfig,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
    load_adapter_weights,
    merge_drift,
    merge_lora,
    param_report,
    save_adapter,
    unmerge_lora,
)


class WithHead(nn.Module):
    """ptft GPT + a classification ``head`` on the last hidden state."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = from_name("gpt-tiny", dropout=0.0, attention_dropout=0.0)
        self.head = nn.Linear(64, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.backbone(input_ids, attention_mask=attention_mask).hidden_states[:, -1])


def ids():
    return torch.randint(0, 1024, (2, 9), generator=torch.Generator().manual_seed(0))


def test_lora_freezes_base_keeps_head_and_merges_exactly():
    m = get_peft_model(WithHead(), "lora", LoraConfig(r=4, alpha=8))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    rep = param_report(m)
    assert 0 < rep.trainable < rep.total and "trainable%" in str(rep)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = ids()
    m.eval()
    before = m(x)
    w0 = m.backbone.layers[0].attn.qkv.weight.clone()
    merge_lora(m)
    torch.testing.assert_close(m(x), before, atol=1e-5, rtol=1e-5)
    unmerge_lora(m)
    w1 = m.backbone.layers[0].attn.qkv.weight
    assert (w1 - w0).abs().max() <= 2 * torch.finfo(torch.float32).eps * w0.abs().max()


def test_merge_drift_bf16_reported():
    m = get_peft_model(WithHead(), "lora", LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-4)  # tiny update: most of it lost when rounded into bf16
    drift = merge_drift(m, torch.bfloat16)
    assert drift["max"] > 0.1
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)  # large update: small relative drift
    assert merge_drift(m, torch.bfloat16)["max"] < 0.05
    assert merge_drift(m, torch.float32)["max"] < 1e-5


@pytest.mark.parametrize(
    "method,config",
    [
        ("lora", LoraConfig(r=2)),
        ("adapter", AdapterConfig(placement="houlsby", bottleneck=8)),
        ("adapter", AdapterConfig(placement="pfeiffer", bottleneck=8)),
        ("ia3", None),
        ("prefix", PrefixTuningConfig(num_virtual_tokens=4, projection=True, projection_hidden=16)),
    ],
)
def test_method_save_load_roundtrip(tmp_path, method, config):
    m = get_peft_model(WithHead(), method, config)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    m.eval()
    x = ids()
    out = m(x)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert all(p.grad is None for p in m.parameters() if not p.requires_grad)
    save_adapter(m, tmp_path, {"peft_type": method})
    fresh = get_peft_model(WithHead(), method, config)
    loaded = load_adapter_weights(fresh, tmp_path)
    assert any(n.endswith("head.weight") for n in loaded)
    fresh.eval()
    torch.testing.assert_close(fresh(x), out.detach())


@pytest.mark.parametrize("method", ["adapter", "ia3", "lora"])
def test_start_equals_base(method):
    x = ids()
    base = WithHead().eval()
    peft_m = get_peft_model(WithHead(), method).eval()
    torch.testing.assert_close(peft_m(x), base(x))


def test_prefix_on_encoder_sees_prefix_and_respects_padding():
    torch.manual_seed(0)
    enc = from_name("bert-tiny-cpu", dropout=0.0, attention_dropout=0.0).eval()
    m = get_peft_model(enc, "prefix", PrefixTuningConfig(num_virtual_tokens=3))
    x = ids()
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    h = m(x, attention_mask=mask).hidden_states
    assert h.shape == (2, 9, 64)
    # padding tokens cannot change row 1's real positions
    x2 = x.clone()
    x2[1, 6:] = 5
    torch.testing.assert_close(m(x2, attention_mask=mask).hidden_states[1, :6], h[1, :6])


def test_prompt_tuning_on_ptft_decoder():
    torch.manual_seed(0)
    dec = from_name("gpt-tiny", dropout=0.0, attention_dropout=0.0).eval()
    m = get_peft_model(dec, "prompt", PromptTuningConfig(num_virtual_tokens=4), init_ids=[7, 8])
    x = ids()
    out = m(x, labels=x)
    assert out.logits is None or out.logits.shape[1] == 13
    out.loss.backward()
    assert m.soft_prompt.grad is not None and m.soft_prompt.grad.abs().sum() > 0
    assert dec.embed_tokens.weight.grad is None
