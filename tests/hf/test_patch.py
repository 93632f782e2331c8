"""ptft_fast.patch beyond the family matrix (test_patch_families.py): how calls reach the ops
(masks, labels by position, tuple outputs, num_items_in_batch, shift_labels), what is left alone
and why (soft-capping, attention outside the interface, nothing to patch), the runtime guards of
the fused loss, and the attention function against transformers' SDPA one.
"""

import copy
import subprocess
import sys

import pytest
import torch
from installed import import_or_skip

import ptft_fast
from ptft_fast import ops
from ptft_fast.hf import patch_attention

transformers = import_or_skip("transformers")
from hf_tiny import VOCAB, batch, build  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _train_parity(model, ref, data, **extra):
    out, out_ref = model.train()(**data, **extra), ref.train()(**data, **extra)
    torch.testing.assert_close(out.loss, out_ref.loss, **TOL)
    out.loss.backward()
    out_ref.loss.backward()
    grads = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, **TOL, msg=name)
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_left_padding_matches(family):
    """Left padding: the pad queries of a causal model see no key; they give zeros like SDPA."""
    model, data = build(family), batch(family)
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    data["attention_mask"] = data["attention_mask"].flip(1)
    data["labels"] = data["input_ids"].masked_fill(data["attention_mask"] == 0, -100)
    inputs = {k: v for k, v in data.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**inputs).logits, ref.eval()(**inputs).logits, **TOL)
    _train_parity(model, ref, data)


def test_padding_masks_reach_ops_attention_compactly(monkeypatch):
    """Encoder and cross-attention padding arrive as a (B, Tk) key_padding_mask, not a dense bias;
    causal layers without padding get causal=True and no mask."""
    seen = []
    real = ops.attention

    def spy(q, k, v, **kwargs):
        seen.append((kwargs["key_padding_mask"], kwargs["attn_bias"], kwargs["causal"]))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(ops, "attention", spy)
    model, data = build("t5"), batch("t5")
    ptft_fast.patch(model)
    model(**data)
    mask = data["attention_mask"].bool()
    encoder, decoder_self, decoder_cross = seen[:2], seen[2::2], seen[3::2]
    for kpm, bias, causal in encoder + decoder_cross:
        assert torch.equal(kpm, mask) and bias.shape[:2] == (1, 4) and not causal
    for kpm, _, causal in decoder_self:
        assert kpm is None and causal


@pytest.mark.parametrize("family", ["gpt2", "bert", "t5"])
def test_tuple_output_and_eval_with_labels_keeps_logits(family):
    model, data = build(family), batch(family)
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    got = model.train()(**data, return_dict=False)
    expected = ref.train()(**data, return_dict=False)
    assert len(got) == len(expected) - 1  # the logits are left out
    torch.testing.assert_close(got[0], expected[0], **TOL)
    model.eval(), ref.eval()
    out, out_ref = model(**data), ref(**data)  # eval with labels: the usual path, logits kept
    torch.testing.assert_close(out.logits, out_ref.logits, **TOL)
    torch.testing.assert_close(out.loss, out_ref.loss, **TOL)


def test_labels_passed_by_position():
    model, data = build("bert"), batch("bert")
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    args = (data["input_ids"], data["attention_mask"], None, None, None, None, None, data["labels"])
    out = model.train()(*args)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.train()(*args).loss, **TOL)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "t5"])
def test_num_items_in_batch_as_transformers_does(family):
    """Causal LM losses divide the sum by num_items_in_batch (transformers' ForCausalLMLoss);
    BERT's and T5's own CrossEntropyLoss ignore it, and so does the patched model."""
    model, data = build(family), batch(family)
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    n = torch.tensor(40)
    out = _train_parity(model, ref, data, num_items_in_batch=n)
    plain = ref.train()(**data).loss
    assert torch.allclose(out.loss, plain) == (family in ("bert", "t5"))


def test_shift_labels_and_ignore_index_reach_the_fused_loss():
    model, data = build("llama"), batch("llama")
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    shift = torch.roll(data["labels"], -2, dims=1)
    shift[:, -2:] = -100
    _train_parity(model, ref, data, shift_labels=shift)
    labels = data["labels"]
    data["labels"] = labels.masked_fill((labels == -100) | (labels == labels[0, 3]), 7)
    _train_parity(model, ref, data, ignore_index=7)


def test_selective_patch_and_backend():
    model = build("bert")
    report = ptft_fast.patch(model, norms=False, loss=False, backend="torch")
    assert report.norms == {} and report.loss is None and report.attention == "ptft_fast_torch"
    assert model.config._attn_implementation == "ptft_fast_torch"
    assert type(model.bert.embeddings.LayerNorm) is torch.nn.LayerNorm
    with pytest.raises(RuntimeError, match="already patched"):
        ptft_fast.patch(model)
    with pytest.raises(ValueError, match="backend"):
        ptft_fast.patch(build("gpt2"), backend="tpu")


def test_model_without_lm_head_reports_loss_left_alone():
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    report = ptft_fast.patch(transformers.BertModel(cfg))
    assert report.loss is None and report.not_patched == [
        "loss: BertModel has no LM head (get_output_embeddings() is None)"
    ]
    assert "left alone: loss: BertModel has no LM head" in str(report)


def test_a_family_outside_the_matrix_is_patched_generically():
    """DistilBERT: its own norm/attention classes and a CrossEntropyLoss attribute, all found."""
    cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0
    )
    cfg.attention_dropout = 0.0
    model = transformers.DistilBertForMaskedLM(cfg)
    ref = copy.deepcopy(model)
    data = batch("bert")
    report = ptft_fast.patch(model)
    assert len(report.norms) == 6 and report.attention_modules == 2 and not report.not_patched
    assert report.loss == "vocab_projector (own_ce, mean CE)"
    _train_parity(model, ref, data)


def test_attention_outside_the_interface_is_left_alone_the_rest_patched():
    cfg = transformers.GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]],
        max_position_embeddings=32, bos_token_id=1, eos_token_id=2, embed_dropout=0.0, attention_dropout=0.0,
        resid_dropout=0.0,
    )  # fmt: skip
    model = transformers.GPTNeoForCausalLM(cfg)
    ref = copy.deepcopy(model)
    report = ptft_fast.patch(model)
    assert report.attention is None and len(report.norms) == 5 and report.loss is not None
    assert report.not_patched == [
        "attention: GPTNeoForCausalLM does not call its attention through transformers' AttentionInterface"
    ]
    _train_parity(model, ref, batch("gpt2"))


def test_soft_capping_is_refused_and_the_rest_patched():
    cfg = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, pad_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.Gemma2ForCausalLM(cfg)
    ref = copy.deepcopy(model)
    report = ptft_fast.patch(model)
    assert report.attention is None and report.loss is None and set(report.norms.values()) == {"offset_rms"}
    assert [why.split(":")[0] for why in report.not_patched] == ["attention", "loss"]
    assert "attn_logit_softcapping=50.0" in report.not_patched[0]
    assert "final_logit_softcapping=30.0" in report.not_patched[1]
    out = _train_parity(model, ref, batch("llama"))
    assert out.logits is not None


def test_nothing_to_patch_is_an_error_and_wrong_types_are_refused():
    model = transformers.ResNetModel(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1])
    )
    with pytest.raises(
        ValueError, match=r"nothing in ResNetModel runs on ptft_fast ops: attention: .*no attention"
    ):
        ptft_fast.patch(model)
    assert not hasattr(model, "_ptft_fast_patch")
    with pytest.raises(
        TypeError, match="expected a transformers PreTrainedModel or a peft PeftModel, got Linear"
    ):
        ptft_fast.patch(torch.nn.Linear(2, 2))


class _ScaledLlama(transformers.LlamaForCausalLM):
    """Scales the logits its loss sees (a temperature) without saying so in its config."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits * 2.0, labels=labels, vocab_size=self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutput(loss=loss, logits=logits)


class _BiasedBertForMaskedLM(transformers.BertForMaskedLM):
    """Changes its MLM logits after the head and computes its own CrossEntropyLoss."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.cls(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state) + 1.0
        loss = None
        if labels is not None:
            loss = torch.nn.CrossEntropyLoss()(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return transformers.modeling_outputs.MaskedLMOutput(loss=loss, logits=logits)


@pytest.mark.parametrize("cls,family", [(_ScaledLlama, "llama"), (_BiasedBertForMaskedLM, "bert")])
def test_logits_changed_between_head_and_loss_raise_instead_of_a_wrong_loss(cls, family):
    model = cls(build(family).config)
    ptft_fast.patch(model)
    with pytest.raises(RuntimeError, match="patch with loss=False"):
        model.train()(**batch(family))
    with torch.no_grad():  # eval and unlabeled calls are not armed: they work
        assert model.eval()(**batch(family)).logits.shape[-1] == VOCAB


class _Heads(torch.nn.Module):
    def __init__(self, is_causal, groups=1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = is_causal, groups


@pytest.mark.parametrize(
    "case", ["none", "causal", "padding", "causal_padding", "float_mask", "position_bias", "gqa", "window"]
)
def test_attention_function_matches_transformers_sdpa(case):
    b, hq, t, d = 2, 4, 6, 8
    groups = 2 if case == "gqa" else 1
    q = torch.randn(b, hq, t, d)
    k, v = torch.randn(b, hq // groups, t, d), torch.randn(b, hq // groups, t, d)
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, 4:] = False
    tri = torch.ones(t, t, dtype=torch.bool).tril()
    mask, bias, causal, extra = None, None, case in ("causal", "causal_padding", "gqa"), {}
    if case == "padding":
        mask = keep[:, None, None, :].expand(b, 1, t, t)  # as transformers builds it: stride 0 over Tq
    elif case == "causal_padding":  # left padding: the first queries of row 1 see no key
        mask = keep.flip(1)[:, None, None, :] & tri
    elif case == "float_mask":
        mask = torch.randn(b, 1, t, t)
    elif case == "position_bias":
        mask, bias = keep[:, None, None, :].expand(b, 1, t, t), torch.randn(1, hq, t, t)
    elif case == "window":  # a window of 3 keys, built into the mask as transformers does
        mask, extra = (
            (tri & ~torch.ones(t, t, dtype=torch.bool).tril(-3)).expand(b, 1, t, t),
            {"sliding_window": 3},
        )
    module = _Heads(causal, groups)
    ours = patch_attention.make_attention_function("torch")
    kwargs = {"scaling": 0.7} if bias is None else {"scaling": 1.0, "position_bias": bias}
    out, weights = ours(module, q, k, v, mask, **kwargs, **extra)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    assert weights is None and out.shape == (b, t, hq, d)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_function_rejects_unsupported_features():
    fn = patch_attention.make_attention_function(None)
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(NotImplementedError, match="softcap"):
        fn(_Heads(False), q, q, q, None, softcap=30.0)
    with pytest.raises(NotImplementedError, match="sliding_window=3 binds over 5 keys but no attention mask"):
        fn(_Heads(True), q, q, q, None, sliding_window=3)
    fn(_Heads(True), q, q, q, None, sliding_window=5)  # cannot bind: fine


def test_import_ptft_fast_does_not_import_transformers():
    code = (
        "import sys, ptft_fast; assert callable(ptft_fast.patch) and callable(ptft_fast.unpatch); "
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
