"""Models under ``torch.autocast`` (bf16 mixed precision, how training runs on GPU): parameters stay
fp32, the ops receive bf16 activations next to fp32 weights, and the loss and gradients track the
fp32 run. On CPU with the torch backend (CPU autocast has the same casting rules as CUDA's); the
Triton kernels under the interpreter in a slow variant, with fp16 autocast (the interpreter's bf16
``tl.dot`` returns garbage — seen with Triton 3.9 — while fp16 and fp32 are exact)."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.models import from_name
from ptft_fast.ops import linear_cross_entropy, use_backend
from ptft_fast.peft import LoraConfig, get_peft_model

PRESETS = ["bert-tiny-cpu", "roberta-tiny", "gpt-tiny", "t5-tiny", "t5-v1_1-tiny", "bart-tiny"]


def _batch(model, b=2, t=16):
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size - 1, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t - 5 :] = 0
    if cfg.arch in ("t5", "bart"):
        labels = torch.randint(5, cfg.vocab_size - 1, (b, t // 2), generator=gen)
        labels[1, -2:] = -100
        return dict(input_ids=ids, attention_mask=mask, labels=labels)
    if cfg.arch == "gpt2":
        labels = ids.masked_fill(mask == 0, -100)
    else:
        labels = torch.where(torch.rand(b, t, generator=gen) < 0.3, ids, -100).masked_fill(mask == 0, -100)
        labels[:, 0] = ids[:, 0]
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def _loss_and_grads(model, batch, autocast: bool, dtype=torch.bfloat16):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach().float(), grads


def _check(model, batch, dtype=torch.bfloat16):
    ref_loss, ref_grads = _loss_and_grads(model, batch, autocast=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        assert model(**batch).loss.dtype == torch.float32, "the loss under autocast must be fp32"
    loss, grads = _loss_and_grads(model, batch, autocast=True, dtype=dtype)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "autocast changed a parameter dtype"
    # bf16 has an 8-bit mantissa: the loss of a tiny random model agrees to ~1e-2 relative
    assert abs(loss - ref_loss) <= 2e-2 + 1e-2 * abs(ref_loss), (loss, ref_loss)
    assert set(grads) == set(ref_grads)
    flat = torch.cat([g.flatten() for g in grads.values() if g is not None])
    ref = torch.cat([ref_grads[n].flatten() for n, g in grads.items() if g is not None])
    assert all(g is None or g.dtype == torch.float32 for g in grads.values())
    assert torch.isfinite(flat).all()
    cos = torch.nn.functional.cosine_similarity(flat, ref, dim=0).item()
    assert cos > 0.99, f"gradient direction under autocast drifted: cosine {cos:.4f}"


@pytest.mark.parametrize("preset", PRESETS)
def test_autocast_bf16_tracks_fp32(preset):
    torch.manual_seed(0)
    model = from_name(preset, dropout=0.0, attention_dropout=0.0)
    with use_backend("torch"):
        _check(model, _batch(model))


@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny-cpu"])
def test_autocast_bf16_lora(preset):
    torch.manual_seed(0)
    model = from_name(preset, dropout=0.0, attention_dropout=0.0)
    model = get_peft_model(model, "lora", LoraConfig(8, 16.0, 0.0, ["qkv", "out"]))
    with torch.no_grad():  # B = 0 at init: make the low-rank path matter
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.05)
    with use_backend("torch"):
        _check(model, _batch(model))


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt-tiny", "t5-tiny"])
def test_autocast_fp16_triton(preset):
    torch.manual_seed(0)
    model = from_name(preset, dropout=0.0, attention_dropout=0.0, num_layers=1)
    with use_backend("triton"):
        _check(model, _batch(model, t=8), dtype=torch.float16)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_under_autocast_matches_pytorch_autocast(reduction):
    """The matmul runs in bf16 and the loss comes back in fp32: with the torch backend exactly what
    PyTorch under autocast computes (bf16 logits, cross-entropy in fp32)."""
    gen = torch.Generator().manual_seed(0)
    h, w = torch.randn(9, 32, generator=gen), torch.randn(50, 32, generator=gen) / 32**0.5
    labels = torch.randint(0, 50, (9,), generator=gen)
    labels[3] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, labels, reduction=reduction, backend="torch")
        want = torch.nn.functional.cross_entropy(h @ w.T, labels, reduction=reduction)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    h64, w64 = h.double(), w.double()  # float64 is outside autocast: untouched, exact
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got64 = linear_cross_entropy(h64, w64, labels, reduction=reduction, backend="torch")
    assert got64.dtype == torch.float64
    torch.testing.assert_close(
        got64, linear_cross_entropy(h64, w64, labels, reduction=reduction, backend="torch")
    )
