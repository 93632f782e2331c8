"""``ptft_fast.patch`` on peft LoRA models, against peft itself (tiny random transformers models,
no downloads): the LoRA Linear layers run on ``ops.lora_linear`` with the same outputs and
gradients (dropout, lora_bias, GPT-2's Conv1D included), adapter switching, several adapters,
merge/unmerge, disable_adapter and merge_and_unload behave as in peft, and save_pretrained
writes the same files, which plain peft loads."""

import copy
import json

import pytest
import torch
from installed import import_or_skip
from safetensors.torch import load_file

import ptft_fast
from ptft_fast import ops

transformers = import_or_skip("transformers")
peft = import_or_skip("peft")
from hf_tiny import batch, build  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-5}
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_proj"]}


@pytest.fixture
def lora_calls(monkeypatch):
    calls = []
    real = ops.lora_linear

    def spy(*args, **kwargs):
        calls.append(args[3])  # lora_a: which adapter's weights
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "lora_linear", spy)
    return calls


def _randomize(model, gen):
    """LoRA B starts at zero (no update): give every adapter tensor random values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def lora_model(family="llama", adapter="default", **config):
    base = build(family)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS[family], task_type="CAUSAL_LM")
    if family == "gpt2":
        cfg["fan_in_fan_out"] = True  # GPT-2's Conv1D stores (in, out)
    model = peft.get_peft_model(base, peft.LoraConfig(**{**cfg, **config}), adapter_name=adapter)
    _randomize(model, torch.Generator().manual_seed(3))
    return model, state


def _step(model, data, seed=5):
    torch.manual_seed(seed)  # the same dropout masks on both sides
    out = model.train()(**data)
    out.loss.backward()
    return out.loss


def _assert_same_training(model, ref, data):
    torch.testing.assert_close(_step(model, data), _step(ref, data), **TOL)
    grads = dict(model.named_parameters())
    trained = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n, _ in trained)
    for name, p in trained:
        torch.testing.assert_close(grads[name].grad, p.grad, **TOL, msg=name)
    model.zero_grad(), ref.zero_grad()


def _logits(model, data):
    inputs = {k: v for k, v in data.items() if k != "labels"}
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.mark.parametrize(
    "family,config",
    [
        ("llama", {}),
        ("llama", {"lora_dropout": 0.2}),
        ("llama", {"lora_bias": True}),
        ("gpt2", {"lora_dropout": 0.1}),
    ],
)
def test_lora_training_runs_on_the_fused_op_with_peft_gradients(family, config, lora_calls):
    model, _ = lora_model(family, **config)
    ref = copy.deepcopy(model)
    data = batch(family)
    report = ptft_fast.patch(model)
    layers = sum(type(m) is peft.tuners.lora.Linear for m in model.modules())  # GPT-2: 3 per block
    assert layers == 2 * (3 if family == "gpt2" else len(TARGETS[family]))
    assert len(report.lora) == layers and report.loss and report.attention and not report.not_patched, report
    assert report.model == "PeftModelForCausalLM" and report.family == family
    _assert_same_training(model, ref, data)
    assert len(lora_calls) == layers  # every LoRA layer, once
    torch.testing.assert_close(_logits(model, data), _logits(ref, data), **TOL)


def test_adapter_switching_and_several_adapters(lora_calls):
    model, _ = lora_model("llama")
    model.add_adapter("other", peft.LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    _randomize(model, torch.Generator().manual_seed(4))
    ref = copy.deepcopy(model)
    data = batch("llama")
    ptft_fast.patch(model)
    for name, layers in (("other", 4), ("default", 6), ("other", 4)):
        model.set_adapter(name), ref.set_adapter(name)
        lora_calls.clear()
        torch.testing.assert_close(_logits(model, data), _logits(ref, data), **TOL)
        assert len(lora_calls) == layers
        q = model.base_model.model.model.layers[0].self_attn.q_proj
        assert lora_calls[0] is q.lora_A[name].weight  # the active adapter's own tensors
        _assert_same_training(model, ref, data)
    # two adapters active at once: peft sums them; the fused op takes one, so peft's forward runs
    model.base_model.set_adapter(["default", "other"]), ref.base_model.set_adapter(["default", "other"])
    lora_calls.clear()
    torch.testing.assert_close(_logits(model, data), _logits(ref, data), **TOL)
    assert len(lora_calls) == 2  # down_proj: only "default" targets it


def test_merge_unmerge_disable_and_merge_and_unload(lora_calls):
    model, _ = lora_model("llama")
    ref = copy.deepcopy(model)
    data = batch("llama")
    ptft_fast.patch(model)
    model.merge_adapter(), ref.merge_adapter()
    lora_calls.clear()
    torch.testing.assert_close(_logits(model, data), _logits(ref, data), **TOL)
    assert lora_calls == []  # merged: the base layers carry the update
    model.unmerge_adapter(), ref.unmerge_adapter()
    torch.testing.assert_close(_logits(model, data), _logits(ref, data), **TOL)
    assert len(lora_calls) == 6
    with model.disable_adapter(), ref.disable_adapter():
        torch.testing.assert_close(_logits(model, data), _logits(ref, data), **TOL)
    merged, ref_merged = model.merge_and_unload(), ref.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    torch.testing.assert_close(_logits(merged, data), _logits(ref_merged, data), **TOL)
    out, out_ref = merged.train()(**data), ref_merged.train()(**data)  # still patched: fused loss
    assert out.logits is None
    torch.testing.assert_close(out.loss, out_ref.loss, **TOL)


def test_save_pretrained_unchanged_and_loads_in_plain_peft(tmp_path):
    """A patched model trained one step saves what the same model saves unpatched, and plain peft
    loads it (onto the same base weights) to the same outputs."""
    model, base_state = lora_model("llama")
    data = batch("llama")
    ptft_fast.patch(model)
    _step(model, data)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    model.save_pretrained(tmp_path / "patched")
    ptft_fast.unpatch(model)
    model.save_pretrained(tmp_path / "plain")
    configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("patched", "plain")]
    for c in configs:  # a set in peft: written in iteration order
        c["target_modules"] = sorted(c["target_modules"])
    assert configs[0] == configs[1]
    got, expected = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("patched", "plain"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    fresh = build("llama")
    fresh.load_state_dict(base_state)
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "patched")
    torch.testing.assert_close(_logits(loaded, data), _logits(model, data), rtol=0, atol=0)


def test_variants_and_other_layer_types_run_peft_own_forward(lora_calls):
    """DoRA (a LoRA variant) and LoRA on an embedding: peft's forward, reported."""
    model, _ = lora_model("llama", use_dora=True, target_modules=["q_proj", "embed_tokens"])
    ref = copy.deepcopy(model)
    data = batch("llama")
    report = ptft_fast.patch(model)
    assert report.lora == [n for n, _ in model.named_modules() if n.endswith("q_proj")]
    assert any("embed_tokens (Embedding): not a peft lora.Linear" in w for w in report.not_patched), report
    assert any("q_proj" in w and "default (DoraLinearVariant)" in w for w in report.not_patched), report
    _assert_same_training(model, ref, data)
    assert lora_calls == []


def test_unpatch_gives_peft_its_forward_back(lora_calls):
    model, _ = lora_model("llama")
    ref = copy.deepcopy(model)
    data = batch("llama")
    ptft_fast.patch(model)
    ptft_fast.unpatch(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert "forward" not in vars(layer)
    torch.testing.assert_close(_logits(model, data), _logits(ref, data), rtol=0, atol=0)
    assert lora_calls == []


def test_a_patched_lora_model_trains_like_peft():
    """Three AdamW steps on the patched and the plain peft model: the same losses."""
    model, _ = lora_model("llama", lora_dropout=0.1)
    ref = copy.deepcopy(model)
    data = batch("llama")
    ptft_fast.patch(model)
    losses = []
    for m in (model, ref):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        losses.append([])
        for step in range(3):
            opt.zero_grad()
            losses[-1].append(_step(m, data, seed=step).item())
            opt.step()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-5)
    assert losses[0][2] < losses[0][0]
