"""LoRA and (IA)³ adapters of ptft_fast models in peft's format: written by ``hf.peft_format``,
loaded by ``peft.PeftModel.from_pretrained`` onto the base model in transformers, they give the
ptft_fast model's logits (every family; fused q/k/v, k/v and gated projections split per part);
and they load back into ptft_fast exactly. (IA)³ follows the paper: keys, values and the FFN's
inner activation are rescaled, queries are not."""

from __future__ import annotations

import json

import pytest
import torch
from installed import import_or_skip

transformers = import_or_skip("transformers")
peft = import_or_skip("peft")

from ptft_fast.hf import peft_format, save_pretrained  # noqa: E402
from ptft_fast.models import from_name  # noqa: E402
from ptft_fast.peft import IA3Config, IA3Linear, LoraConfig, apply_ia3, apply_lora  # noqa: E402

V = 97
PRESETS = ["bert-tiny-cpu", "roberta-tiny", "gpt-tiny", "t5-tiny", "t5-v1_1-tiny", "bart-tiny"]
ALL_LINEARS = ["qkv", "q", "kv", "out", "fc_in", "fc_out"]


def base_model(preset: str):
    torch.manual_seed(0)
    ids = dict(bos_token_id=V - 1, eos_token_id=V - 1) if preset == "gpt-tiny" else {}
    m = from_name(preset, vocab_size=V, dropout=0.0, attention_dropout=0.0, **ids)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return m.eval()


def batch(preset: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V - 1, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    b = {"input_ids": ids, "attention_mask": mask}
    if preset.startswith(("t5", "bart")):
        b["decoder_input_ids"] = torch.randint(3, V - 1, (2, 5), generator=g)
    return b


def perturb_adapters(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "ia3_l" in n:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))


def hf_with_adapter(base_dir, adapter_dir):
    arch = json.loads((base_dir / "config.json").read_text())["architectures"][0]
    hf = getattr(transformers, arch).from_pretrained(base_dir).eval()
    return peft.PeftModel.from_pretrained(hf, adapter_dir).eval()


def logits_agree(ours, hf, preset):
    b = batch(preset)
    with torch.no_grad():
        got = ours(**b).logits
        ref = hf(**b).logits
    rows = b["attention_mask"].bool() if "decoder_input_ids" not in b else torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(got[rows], ref[rows], atol=1e-4, rtol=1e-4)
    return got


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapter_loads_in_peft_with_equal_logits(tmp_path, preset, method):
    base = base_model(preset)
    save_pretrained(base, tmp_path / "base")
    before = base(**batch(preset)).logits
    if method == "lora":
        apply_lora(base, LoraConfig(r=3, alpha=5.0, target_modules=ALL_LINEARS))
    else:
        apply_ia3(base, IA3Config())
    perturb_adapters(base)
    state, config = peft_format.to_peft(base, base.config, str(tmp_path / "base"))
    peft_format.save(tmp_path / "adapter", state, config)
    ours = logits_agree(base, hf_with_adapter(tmp_path / "base", tmp_path / "adapter"), preset)
    assert not torch.allclose(ours, before, atol=1e-3)  # the adapter changes the model
    fresh = base_model(preset)  # and loads back into ptft_fast exactly
    if method == "lora":
        apply_lora(fresh, LoraConfig(r=3, alpha=5.0, target_modules=ALL_LINEARS))
    else:
        apply_ia3(fresh, IA3Config())
    state, _ = peft_format.load(tmp_path / "adapter")
    assert peft_format.from_peft(fresh, fresh.config, state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch(preset)).logits, ours, atol=0, rtol=0)


@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "gpt-tiny", "t5-tiny", "bart-tiny"])
def test_ia3_rescales_keys_values_and_ffn_not_queries(preset):
    """The paper's placement: per layer, the key and value outputs of self- (and cross-)
    attention and the input of the FFN's output projection; the query outputs pass unscaled."""
    m = base_model(preset)
    apply_ia3(m, IA3Config())
    wrapped = {n: mod for n, mod in m.named_modules() if isinstance(mod, IA3Linear)}
    layers = [n for n, _ in m.named_modules() if n.endswith(".mlp")]
    assert sorted(n for n in wrapped if n.endswith("fc_out")) == sorted(f"{n}.fc_out" for n in layers)
    for name, mod in wrapped.items():
        inner = mod.base.out_features
        if name.endswith(".qkv"):
            assert mod.skip == inner // 3 and mod.ia3_l.numel() == 2 * inner // 3
        elif name.endswith(".kv"):
            assert mod.skip == 0 and mod.ia3_l.numel() == inner
        else:
            assert name.endswith(".fc_out") and mod.feedforward and mod.ia3_l.numel() == mod.base.in_features
    qkv = next(mod for n, mod in wrapped.items() if n.endswith(".qkv"))
    with torch.no_grad():
        qkv.ia3_l.fill_(2.0)
    x = torch.randn(3, qkv.base.in_features)
    y, ref = qkv(x), qkv.base(x)
    third = qkv.skip
    torch.testing.assert_close(y[:, :third], ref[:, :third])  # queries unscaled
    torch.testing.assert_close(y[:, third:], 2 * ref[:, third:])


def test_lora_on_a_head_is_not_exportable():
    m = base_model("bert-tiny-cpu")
    apply_lora(m, LoraConfig(r=2, target_modules=["mlm.dense"]))
    assert peft_format.exportable(m, m.config) is None  # the MLM head is part of the base model
    head = torch.nn.ModuleDict({"backbone": m, "head": torch.nn.Linear(4, 2)})
    apply_lora(head, LoraConfig(r=2, target_modules=["head"]))
    reason = peft_format.exportable(head, m.config, prefix="backbone.")
    assert reason is not None and "head" in reason
    with pytest.raises(peft_format.NotExportable, match="head has no transformers counterpart"):
        peft_format.to_peft(head, m.config, "base", prefix="backbone.")
