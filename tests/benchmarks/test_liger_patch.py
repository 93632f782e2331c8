"""liger_patch: Liger-Kernel's norms and fused linear cross-entropy in transformers' BERT, GPT-2, T5.

On CPU only the loss half runs (Liger's FLCE works under TRITON_INTERPRET=1, its norm kernels do
not): patched vs unpatched loss and gradients, fp32, on tiny random models. The norm swap is checked
structurally here and numerically on CUDA.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from installed import import_or_skip

transformers = import_or_skip("transformers")
import_or_skip("peft")
liger = import_or_skip("liger_kernel.transformers")

from ptft_fast.benchmarks import bench_train_e2e as e2e  # noqa: E402  (needs transformers)
from ptft_fast.benchmarks import liger_patch  # noqa: E402  (needs liger_kernel)

V, H = 97, 32  # vocabulary, hidden size of the tiny models
FAMILIES = ["bert", "gpt2", "t5", "t5-untied"]


def _model(family: str) -> torch.nn.Module:
    """Tiny random model in train mode, dropout 0; BERT's decoder bias random (it starts at 0)."""
    if family == "bert":
        config = transformers.BertConfig(
            vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        model = transformers.BertForMaskedLM(config)
        with torch.no_grad():
            model.cls.predictions.bias.normal_()
    elif family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=V, n_positions=32, n_embd=H, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.T5Config(
            vocab_size=V, d_model=H, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
            tie_word_embeddings=family == "t5",  # transformers scales the decoder output only when tied
        )  # fmt: skip
        model = transformers.T5ForConditionalGeneration(config)
    return model.train()


def _batch(family: str, device="cpu") -> dict[str, torch.Tensor]:
    """The kwargs the bench passes: ids (2, 12), a padded attention mask, labels with -100s
    (T5: labels and decoder inputs (2, 7), the last labels padding)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, V, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    if family == "gpt2":
        labels = ids.masked_fill(mask == 0, -100)
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    elif family == "bert":
        labels = ids.masked_fill(torch.rand(ids.shape, generator=gen) < 0.6, -100)
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    else:
        labels = torch.randint(1, V, (2, 7), generator=gen)
        labels[1, -2:] = -100
        decoder_ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), labels[:, :-1].clamp(min=0)], 1)
        batch = dict(
            input_ids=ids, attention_mask=mask, labels=labels,
            decoder_input_ids=decoder_ids, decoder_attention_mask=(labels != -100).long(),
        )  # fmt: skip
    return {k: v.to(device) for k, v in batch.items()}


def _loss_and_grads(model, batch) -> tuple[object, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_loss_and_grads(model, reference, batch, rtol, atol):
    out, grads = _loss_and_grads(model, batch)
    ref_out, ref_grads = _loss_and_grads(reference, batch)
    assert out.logits is None  # the fused loss never built them
    torch.testing.assert_close(out.loss, ref_out.loss, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(
            grad, ref_grads[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.triton
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_loss_matches_transformers(family):
    model = _model(family)
    reference = copy.deepcopy(model)
    liger_patch.patch(model, norms=False)
    batch = _batch(family)
    _assert_same_loss_and_grads(model, reference, batch, rtol=1e-5, atol=1e-6)
    without_labels = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():  # no labels: transformers' own forward, logits and all
        torch.testing.assert_close(model(**without_labels).logits, reference(**without_labels).logits)
    if family == "t5-untied":  # without decoder inputs the model shifts the labels right itself
        labels_only = {k: v for k, v in batch.items() if not k.startswith("decoder")}
        _assert_same_loss_and_grads(model, reference, labels_only, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
def test_gpt2_num_items_in_batch_divides_the_sum():
    model = _model("gpt2")
    reference = copy.deepcopy(model)
    liger_patch.patch(model, norms=False)
    batch = {**_batch("gpt2"), "num_items_in_batch": torch.tensor(5)}
    _assert_same_loss_and_grads(model, reference, batch, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
def test_gpt2_lora_after_the_patch_trains_the_lora_weights():
    """As the bench does: patch, then peft LoRA (bench_train_e2e._hf_lora) on c_attn / c_proj."""
    gen = torch.Generator().manual_seed(2)
    r = e2e.LORA_R

    def pair(out):
        return torch.randn(r, H, generator=gen) * 0.2, torch.randn(out, r, generator=gen) * 0.2

    weights = [{"qkv": pair(3 * H), "out": pair(H)} for _ in range(2)]
    model = _model("gpt2")
    reference = e2e._hf_lora(copy.deepcopy(model), weights)
    model = e2e._hf_lora(liger_patch.patch(model, norms=False), weights)
    out, grads = _loss_and_grads(model, _batch("gpt2"))
    assert out.logits is None  # the patched forward ran under peft's wrapper
    lora = [n for n in grads if "lora_" in n]
    assert len(lora) == 8 and all(grads[n].abs().sum() > 0 for n in lora)
    _assert_same_loss_and_grads(model, reference, _batch("gpt2"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_swap_norms_replaces_every_norm_with_copied_weights(family, dtype):
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    model = _model(family).to(dtype)
    old_type = T5LayerNorm if family == "t5" else torch.nn.LayerNorm
    with torch.no_grad():  # weights 1 and biases 0 at init: a missing copy would go unseen
        for p in model.parameters():
            p.normal_()
    old = {n: m for n, m in model.named_modules() if isinstance(m, old_type)}
    next(iter(old.values())).weight.requires_grad_(False)
    params = {n: p.clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    assert liger_patch.swap_norms(model) == len(old) > 0
    assert not any(isinstance(m, old_type) for m in model.modules())
    new_type = liger.LigerRMSNorm if family == "t5" else liger.LigerLayerNorm
    for name, was in old.items():
        now = model.get_submodule(name)
        assert type(now) is new_type and now.training
        if family == "t5":  # T5's norm: w · x / rms(x), w as is, rms in fp32
            assert (now.variance_epsilon, now.offset) == (was.variance_epsilon, 0.0)
            assert (now.casting_mode, now.in_place) == ("llama", False)
        else:
            assert now.eps == was.eps and now.bias.dtype == dtype
    assert {n: p.dtype for n, p in model.named_parameters()} == {n: p.dtype for n, p in params.items()}
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen


def test_other_models_are_refused():
    with pytest.raises(ValueError, match=r"liger_patch: model must be one of .* got BertModel"):
        liger_patch.patch(transformers.BertModel(_model("bert").config))


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_bench_uses_liger_own_patch_if_it_has_one_else_this(family):
    patch = e2e._liger_patch(SimpleNamespace(family=family), torch.device("cuda"))
    if hasattr(liger, f"apply_liger_kernel_to_{family}"):
        assert patch is not liger_patch.patch
    else:
        assert patch is liger_patch.patch
    with pytest.raises(e2e.Unavailable, match="needs a CUDA device"):
        e2e._liger_patch(SimpleNamespace(family=family), torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_full_patch_matches_transformers_on_cuda(family):
    model = _model(family).cuda()
    reference = copy.deepcopy(model)
    liger_patch.patch(model)
    _assert_same_loss_and_grads(model, reference, _batch(family, "cuda"), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("index", range(len(e2e.QUICK)), ids=[f"{w.op}@{w.seq}" for w in e2e.QUICK])
def test_bench_hf_liger_step0_loss_matches_hf_eager_on_cuda(index):
    """The bench's provider (bf16 autocast): its step-0 loss check vs hf-eager passes."""
    device = torch.device("cuda")
    built = e2e.build(e2e.QUICK[index], device)
    try:
        step = e2e.providers(built, device)["hf-liger"]()
        assert torch.isfinite(step())
    finally:
        built.ckpt.cleanup()
