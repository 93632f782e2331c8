"""The family matrix of ``ptft_fast.patch``: Llama, Mistral (sliding window), Qwen2 (MQA), Gemma
((1 + w) norms), Phi-3, BERT, RoBERTa, GPT-2, T5, BART and BERT as a causal LM, from tiny random
configs (no downloads). The patched model must give the unpatched model's logits, loss and
gradients (fp32, 1e-5) with padding and GQA, the same greedy generate() output, run on ptft_fast's
ops, and come back exactly with unpatch().
"""

import copy

import pytest
import torch
from installed import import_or_skip

import ptft_fast
from ptft_fast import ops

transformers = import_or_skip("transformers")
from hf_tiny import DECODERS, SEQ2SEQ, batch, build  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-5}
# family → (norms, their form, attention layers, fused-loss route)
EXPECTED = {
    "llama": (5, "rms", 2, "loss_function, causal"),
    "mistral": (5, "rms", 2, "loss_function, causal"),
    "qwen2": (5, "rms", 2, "loss_function, causal"),
    "gemma": (5, "offset_rms", 2, "loss_function, causal"),
    "phi3": (5, "rms", 2, "loss_function, causal"),
    "bert": (6, "layer_norm", 2, "own_ce, mean CE"),
    "roberta": (6, "layer_norm", 2, "own_ce, mean CE"),
    "gpt2": (5, "layer_norm", 2, "loss_function, causal"),
    "t5": (12, "rms", 6, "own_ce, mean CE"),
    "bart": (12, "layer_norm", 6, "own_ce, mean CE"),
    "bert-causal": (6, "layer_norm", 2, "loss_function, causal"),
}


@pytest.fixture
def op_calls(monkeypatch):
    """Counts calls of the ptft_fast ops the patched modules reach."""
    calls = dict.fromkeys(("attention", "layer_norm", "linear_cross_entropy"), 0)
    for name in calls:
        real = getattr(ops, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(ops, name, spy)
    return calls


def _inputs(model, family, data):
    """The batch without labels (seq2seq: with the decoder inputs the labels would give)."""
    inputs = {k: v for k, v in data.items() if k != "labels"}
    if family in SEQ2SEQ:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=data["labels"])
    return inputs


@pytest.mark.parametrize("family", list(EXPECTED))
def test_patched_model_matches_unpatched(family, op_calls):
    model, data = build(family), batch(family)
    ref = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = ptft_fast.patch(model)

    n_norms, form, n_attention, route = EXPECTED[family]
    assert report.family == family.split("-")[0] and not report.not_patched, report
    assert len(report.norms) == n_norms and set(report.norms.values()) == {form}, report
    assert report.attention == "ptft_fast" and report.attention_modules == n_attention
    assert report.loss.endswith(f"({route})"), report.loss
    after = model.state_dict()  # same keys, same tensors: nothing copied or renamed
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())

    inputs = _inputs(model, family, data)
    with torch.no_grad():
        expected, got = ref.eval()(**inputs).logits, model.eval()(**inputs).logits
    torch.testing.assert_close(got, expected, **TOL)
    assert op_calls["attention"] >= n_attention and op_calls["layer_norm"] >= n_norms

    out_ref, out = ref.train()(**data), model.train()(**data)
    assert op_calls["linear_cross_entropy"] == 1 and out.logits is None and "logits" not in out
    torch.testing.assert_close(out.loss, out_ref.loss, **TOL)
    out_ref.loss.backward()
    out.loss.backward()
    grads = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        assert grads[name].grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, **TOL, msg=name)


@pytest.mark.parametrize("family", [*DECODERS[:-1], *SEQ2SEQ])
def test_greedy_generation_with_kv_cache_unchanged(family):
    model, data = build(family), batch(family)
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    # decoder-only prompts are left-padded, as generate() expects
    mask = data["attention_mask"] if family in SEQ2SEQ else data["attention_mask"].flip(1)
    kwargs = {"attention_mask": mask, "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    expected = ref.eval().generate(data["input_ids"], **kwargs)
    assert torch.equal(model.eval().generate(data["input_ids"], **kwargs), expected)


@pytest.mark.parametrize("family", ["llama", "gemma", "bart", "t5"])
def test_unpatch_restores_the_very_modules(family):
    model, data = build(family), batch(family)
    modules = list(model.modules())
    attn = model.config._attn_implementation
    with torch.no_grad():
        before = model.eval()(**_inputs(model, family, data)).logits
        before_train = model.train()(**data).loss
    ptft_fast.patch(model)
    model.train()(**data).loss.backward()
    report = ptft_fast.unpatch(model)
    assert report.attention == "ptft_fast"
    assert all(a is b for a, b in zip(model.modules(), modules, strict=True))
    assert model.config._attn_implementation == attn and "_loss_function" not in vars(model)
    assert not model._forward_hooks and not model._forward_pre_hooks
    model.zero_grad()
    with torch.no_grad():
        assert torch.equal(model.eval()(**_inputs(model, family, data)).logits, before)
        assert torch.equal(model.train()(**data).loss, before_train)
    with pytest.raises(ValueError, match="is not patched"):
        ptft_fast.unpatch(model)
    ptft_fast.patch(model)  # and it can be patched again
