"""ELECTRA: generator masking recipe, replacement sampling, discriminator labels, loss weighting."""

import torch

from ptft_fast.data.electra import (
    discriminator_loss,
    electra_loss,
    electra_masking,
    replace_with_generator_samples,
)
from ptft_fast.data.mlm import MLMCollator, MLMConfig


def test_generator_masking_recipe(wordpiece, wp_docs, chunks):
    coll = MLMCollator(wordpiece, MLMConfig(masking=electra_masking()))
    ex = chunks(wp_docs, 126)
    n_chosen = n_mask = n_same = 0
    for i in range(0, len(ex), 64):
        b = coll(ex[i : i + 64])
        chosen = b["labels"] != -100
        n_chosen += int(chosen.sum())
        n_mask += int((b["input_ids"][chosen] == wordpiece.mask_id).sum())
        n_same += int((b["input_ids"][chosen] == b["labels"][chosen]).sum())
    assert n_chosen >= 15_000
    assert abs(n_mask / n_chosen - 0.85) < 0.01
    assert abs(n_same / n_chosen - 0.15) < 0.01  # no random replacements


def test_replacement_sampling_and_labels():
    g = torch.Generator().manual_seed(0)
    b, t, v = 2048, 128, 50
    original = torch.randint(10, v, (b, t), generator=g)
    chosen = torch.rand(b, t, generator=g) < 0.15
    labels = original.masked_fill(~chosen, -100)
    inputs = original.masked_fill(chosen, 4)
    attention = torch.ones(b, t, dtype=torch.long)
    attention[:, -10:] = 0
    # generator puts half its mass on the original token, half on token 5
    logits = torch.full((b, t, v), -1e9)
    logits.scatter_(2, original[..., None], 0.0)
    logits[..., 5] = 0.0
    out = replace_with_generator_samples(inputs, labels, logits, attention, generator=g)
    d_in, d_lab = out["disc_input_ids"], out["disc_labels"]
    assert torch.equal(d_in[~chosen], original[~chosen])
    assert set(d_in[chosen].unique().tolist()) <= set(original[chosen].unique().tolist()) | {5}
    real = attention.bool()
    assert (d_lab[~real] == -100).all()
    assert (d_lab[real & ~chosen] == 0).all()
    replaced = d_lab[real & chosen].float().mean().item()
    assert abs(replaced - 0.5) < 0.01
    assert torch.equal(d_lab[real] == 1, (d_in != original)[real])
    # a generator that is always right replaces nothing; masked-only logits (N, V) work the same
    perfect = torch.full((int(chosen.sum()), v), -1e9)
    perfect[torch.arange(len(perfect)), original[chosen]] = 0.0
    out = replace_with_generator_samples(inputs, labels, perfect, generator=g)
    assert torch.equal(out["disc_input_ids"], original) and (out["disc_labels"] == 0).all()


def test_replacement_rate_statistics():
    g = torch.Generator().manual_seed(1)
    n, v = 200_000, 20
    original = torch.randint(0, v, (1, n), generator=g)
    labels = original.clone()
    logits = torch.zeros(n, v)  # uniform generator: replaced with probability 1 - 1/V
    out = replace_with_generator_samples(torch.full_like(original, 4), labels, logits, generator=g)
    assert abs(out["disc_labels"].float().mean().item() - (1 - 1 / v)) < 0.01


def test_losses():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    labels = torch.tensor([[1, 0, -100]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    )
    assert torch.allclose(discriminator_loss(logits, labels), want)
    assert electra_loss(torch.tensor(2.0), torch.tensor(0.1)).item() == 2.0 + 50 * 0.1
