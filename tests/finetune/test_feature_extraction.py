"""Feature extraction, the alternative to fine-tuning: ELMo's scalar mix of all layers as the
pooling, and head-only training on a frozen backbone (weights unchanged, no dropout, no autograd)."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.finetune.heads import ScalarMix, TaskModel, head_state_dict, load_head_state_dict, masked_mean
from ptft_fast.finetune.loop import FinetuneConfig, train
from ptft_fast.models import from_name
from ptft_fast.peft import get_peft_model


def batch(v=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, v, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("preset", ["bert-tiny-cpu", "gpt-tiny", "bart-tiny"])
@pytest.mark.parametrize("task", ["cls", "tok"])
def test_scalar_mix_is_the_softmax_weighted_sum_of_every_layer(preset, task):
    torch.manual_seed(0)
    backbone = from_name(preset, dropout=0.0, attention_dropout=0.0)
    m = TaskModel(backbone, task, 4, dropout=0.0, pooling="scalar-mix").eval()
    n = m.scalar_mix.weights.numel()
    depth = backbone.config.decoder_layers if preset.startswith("bart") else backbone.config.num_layers
    assert n == depth + 1  # embeddings + every layer
    with torch.no_grad():
        m.scalar_mix.weights.copy_(torch.randn(n))
        m.scalar_mix.gamma.fill_(1.7)
    ids, mask = batch()
    kw = {"decoder_input_ids": ids} if preset.startswith("bart") else {}
    layers = backbone(ids, attention_mask=mask, output_hidden_states=True, **kw).all_hidden_states
    s = m.scalar_mix.weights.softmax(0)
    mixed = 1.7 * sum(s[j] * layers[j] for j in range(n))  # (B, T, C)
    feats = masked_mean(mixed, mask) if task == "cls" else mixed
    torch.testing.assert_close(m(ids, mask)["logits"], m.head(feats), atol=1e-5, rtol=1e-5)
    # a one-hot mix picks one layer: the embeddings' output differs from the last layer's
    with torch.no_grad():
        m.scalar_mix.weights.copy_(torch.tensor([60.0] + [0.0] * (n - 1)))
        m.scalar_mix.gamma.fill_(1.0)
    torch.testing.assert_close(m.hidden(ids, mask), layers[0], atol=1e-5, rtol=1e-5)


def test_scalar_mix_learns_and_checks_its_input():
    mix = ScalarMix(3)
    h = [torch.randn(2, 4, 5) for _ in range(3)]
    mix(h).pow(2).sum().backward()
    assert mix.weights.grad is not None and mix.gamma.grad is not None
    with pytest.raises(ValueError, match="expected 3 layers, got 2"):
        mix(h[:2])


def tiny_data():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (12, 7), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 3, (12,), generator=g),
    }


@pytest.mark.parametrize("pooling", ["auto", "scalar-mix"])
def test_frozen_backbone_trains_the_head_only(pooling):
    torch.manual_seed(0)
    backbone = from_name("bert-tiny-cpu", vocab_size=60)  # dropout on: frozen features must not see it
    m = TaskModel(backbone, "cls", 3, pooling=pooling)
    m.freeze_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in head_state_dict(m).items()}
    m.train()
    assert not backbone.training and m.head.training
    ids, mask = batch()
    torch.testing.assert_close(m.hidden(ids, mask), m.hidden(ids, mask))  # no dropout in the features
    out = m(ids, mask, labels=torch.tensor([0, 1, 2]))
    assert not backbone(ids, attention_mask=mask).hidden_states.requires_grad  # no autograd graph
    out["loss"].backward()
    assert all(p.grad is None for p in backbone.parameters())
    train(
        m,
        tiny_data(),
        lambda _: {"accuracy": 0.0},
        FinetuneConfig(epochs=2, batch_size=4, progress=False),
        metric="accuracy",
    )
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    moved = [k for k, v in head_state_dict(m).items() if not torch.equal(v, head_before[k])]
    assert moved and all(k.startswith(("head.", "scalar_mix.")) for k in head_state_dict(m))
    if pooling == "scalar-mix":
        assert {"scalar_mix.weights", "scalar_mix.gamma"} <= set(moved)
    # the head alone restores the model on the same backbone
    fresh = TaskModel(backbone, "cls", 3, pooling=pooling).eval()
    load_head_state_dict(fresh, head_state_dict(m))
    m.eval()
    torch.testing.assert_close(fresh(ids, mask)["logits"], m(ids, mask)["logits"])
    with pytest.raises(ValueError, match="not saved"):
        load_head_state_dict(fresh, dict(list(head_state_dict(m).items())[:-1]))


def test_peft_keeps_the_scalar_mix_trainable():
    torch.manual_seed(0)
    m = TaskModel(from_name("bert-tiny-cpu", vocab_size=60), "cls", 3, pooling="scalar-mix")
    get_peft_model(m, "lora")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"scalar_mix.weights", "scalar_mix.gamma"} <= trainable
