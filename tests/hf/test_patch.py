"""ptft_fast.patch on transformers models built from small random configs (no downloads).

The patched model must give the same logits, loss and gradients as the unpatched one (fp32, CPU,
1e-4), with the work actually done by ptft_fast ops.
"""

import copy
import subprocess
import sys

import pytest
import torch

import ptft_fast
from ptft_fast import ops
from ptft_fast.hf import patch_attention

transformers = pytest.importorskip("transformers")
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

TOL = {"atol": 1e-4, "rtol": 1e-4}
VOCAB = 97


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


def _batch(b=3, t=11):
    ids = torch.randint(0, VOCAB, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    return ids, mask


def _mlm_batch():
    ids, mask = _batch()
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]  # masked-LM targets on a third of the positions
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _clm_batch():
    ids, mask = _batch()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def bert():
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForMaskedLM(cfg), _mlm_batch()


def roberta():
    cfg = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.RobertaForMaskedLM(cfg), _mlm_batch()


def bert_causal():
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, is_decoder=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertLMHeadModel(cfg), _clm_batch()


def gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg), _clm_batch()


def t5():
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    ids, mask = _batch()
    labels = torch.randint(1, VOCAB, (3, 6))
    labels[0, 4:] = -100
    return transformers.T5ForConditionalGeneration(cfg), {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
    }


# family → builder, norms, attention layers
FAMILIES = {
    "bert": (bert, 6, 2),
    "gpt2": (gpt2, 5, 2),
    "t5": (t5, 12, 6),
    "roberta": (roberta, 4, 1),
    "bert-causal": (bert_causal, 4, 1),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_patched_model_matches_original(family, op_calls):
    build, n_norms, n_attention = FAMILIES[family]
    model, batch = build()
    ref = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = ptft_fast.patch(model)

    assert report.family == family.split("-")[0] and report.model == type(model).__name__
    assert len(report.norms) == n_norms and report.attention == "ptft_fast"
    assert report.attention_modules == n_attention and report.loss is not None and not report.not_patched
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())

    # inference: same logits, with padding
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if family == "t5":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    ref.eval(), model.eval()
    with torch.no_grad():
        expected, got = ref(**inputs).logits, model(**inputs).logits
    torch.testing.assert_close(got, expected, **TOL)
    assert op_calls["attention"] >= n_attention and op_calls["layer_norm"] >= n_norms

    # training step: same loss and gradients, loss from ops.linear_cross_entropy, no logits
    ref.train(), model.train()
    out_ref, out = ref(**batch), model(**batch)
    assert op_calls["linear_cross_entropy"] == 1
    assert out.logits is None and "logits" not in out
    torch.testing.assert_close(out.loss, out_ref.loss, **TOL)
    out_ref.loss.backward()
    out.loss.backward()
    grads = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        assert grads[name].grad is not None, name
        torch.testing.assert_close(grads[name].grad, p.grad, **TOL, msg=name)


def test_left_padding_matches_everywhere():
    """Left padding: the pad queries of a causal model see no key; they give zeros like SDPA."""
    model, batch = gpt2()
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**inputs).logits, ref.eval()(**inputs).logits, **TOL)
    model.train()(**batch).loss.backward()
    ref.train()(**batch).loss.backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


@pytest.mark.parametrize("build", [gpt2, t5])
def test_greedy_generation_with_kv_cache_matches(build):
    model, batch = build()
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    mask = batch["attention_mask"].flip(1) if build is gpt2 else batch["attention_mask"]
    kwargs = {"attention_mask": mask, "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    expected = ref.eval().generate(batch["input_ids"], **kwargs)
    assert torch.equal(model.eval().generate(batch["input_ids"], **kwargs), expected)


def test_padding_masks_reach_ops_attention_compactly(monkeypatch):
    """Encoder and cross-attention padding arrive as a (B, Tk) key_padding_mask, not a dense bias;
    causal layers without padding get causal=True and no mask."""
    seen = []
    real = ops.attention

    def spy(q, k, v, **kwargs):
        seen.append((kwargs["key_padding_mask"], kwargs["attn_bias"], kwargs["causal"]))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(ops, "attention", spy)
    model, batch = t5()
    ptft_fast.patch(model)
    model(**batch)
    mask = batch["attention_mask"].bool()
    encoder, decoder_self, decoder_cross = seen[:2], seen[2::2], seen[3::2]
    for kpm, bias, causal in encoder + decoder_cross:
        assert torch.equal(kpm, mask) and bias.shape[:2] == (1, 4) and not causal
    for kpm, _, causal in decoder_self:
        assert kpm is None and causal


def test_tuple_output_and_eval_with_labels_keeps_logits():
    model, batch = gpt2()
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    loss, *_ = model.train()(**batch, return_dict=False)
    torch.testing.assert_close(loss, ref.train()(**batch).loss, **TOL)
    model.eval(), ref.eval()
    out, out_ref = model(**batch), ref(**batch)  # eval with labels: the usual path, logits kept
    torch.testing.assert_close(out.logits, out_ref.logits, **TOL)
    torch.testing.assert_close(out.loss, out_ref.loss, **TOL)


def test_labels_passed_by_position():
    model, batch = bert()
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    args = (batch["input_ids"], batch["attention_mask"], None, None, None, None, None, batch["labels"])
    out = model.train()(*args)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.train()(*args).loss, **TOL)


def test_causal_lm_honours_num_items_in_batch():
    model, batch = gpt2()
    ref = copy.deepcopy(model)
    ptft_fast.patch(model)
    n = torch.tensor(40)
    expected = ref.train()(**batch, num_items_in_batch=n).loss
    torch.testing.assert_close(model.train()(**batch, num_items_in_batch=n).loss, expected, **TOL)


def test_selective_patch_and_backend():
    model, _ = bert()
    report = ptft_fast.patch(model, norms=False, loss=False, backend="torch")
    assert report.norms == [] and report.loss is None and report.attention == "ptft_fast_torch"
    assert model.config._attn_implementation == "ptft_fast_torch"
    assert type(model.bert.embeddings.LayerNorm) is torch.nn.LayerNorm
    with pytest.raises(RuntimeError, match="already patched"):
        ptft_fast.patch(model)


def test_model_without_lm_head_reports_loss_not_patched():
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    report = ptft_fast.patch(transformers.BertModel(cfg))
    assert report.loss is None and "BertModel has no LM/MLM head" in report.not_patched[0]
    assert "not patched" in str(report)


def test_refuses_unknown_models():
    cfg = transformers.DistilBertConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    model = transformers.DistilBertForMaskedLM(cfg)
    with pytest.raises(
        ValueError, match=r"unsupported model DistilBertForMaskedLM.*supported: BERT.*GPT-2.*T5"
    ):
        ptft_fast.patch(model)
    assert model.config._attn_implementation != "ptft_fast"  # left untouched
    with pytest.raises(TypeError, match="expected a transformers PreTrainedModel, got Linear"):
        ptft_fast.patch(torch.nn.Linear(2, 2))


class _Heads(torch.nn.Module):
    def __init__(self, is_causal, groups=1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = is_causal, groups


@pytest.mark.parametrize(
    "case", ["none", "causal", "padding", "causal_padding", "float_mask", "position_bias", "gqa"]
)
def test_attention_function_matches_transformers_sdpa(case):
    b, hq, t, d = 2, 4, 6, 8
    groups = 2 if case == "gqa" else 1
    q = torch.randn(b, hq, t, d)
    k, v = torch.randn(b, hq // groups, t, d), torch.randn(b, hq // groups, t, d)
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, 4:] = False
    tri = torch.ones(t, t, dtype=torch.bool).tril()
    mask, bias, causal = None, None, case in ("causal", "causal_padding", "gqa")
    if case == "padding":
        mask = keep[:, None, None, :].expand(b, 1, t, t)  # as transformers builds it: stride 0 over Tq
    elif case == "causal_padding":  # left padding: the first queries of row 1 see no key
        mask = keep.flip(1)[:, None, None, :] & tri
    elif case == "float_mask":
        mask = torch.randn(b, 1, t, t)
    elif case == "position_bias":
        mask, bias = keep[:, None, None, :].expand(b, 1, t, t), torch.randn(1, hq, t, t)
    module = _Heads(causal, groups)
    ours = patch_attention.make_attention_function("torch")
    kwargs = {"scaling": 0.7} if bias is None else {"scaling": 1.0, "position_bias": bias}
    out, weights = ours(module, q, k, v, mask, **kwargs)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    assert weights is None and out.shape == (b, t, hq, d)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_function_rejects_unsupported_features():
    fn = patch_attention.make_attention_function(None)
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(NotImplementedError, match="softcap"):
        fn(_Heads(False), q, q, q, None, softcap=30.0)


def test_import_ptft_fast_does_not_import_transformers():
    code = "import sys, ptft_fast; assert callable(ptft_fast.patch); assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
