"""ptft_fast.nn.LinearCrossEntropyLoss vs nn.CrossEntropyLoss on the full logits."""

import pytest
import torch
from torch import nn

from ptft_fast.nn import LinearCrossEntropyLoss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_cross_entropy_on_full_logits(reduction, label_smoothing, with_bias):
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, requires_grad=True)
    weight = (torch.randn(v, h) * 0.3).requires_grad_()
    bias = (torch.randn(v) * 0.1).requires_grad_() if with_bias else None
    labels = torch.randint(0, v, (n,))
    labels[::4] = -100
    loss = LinearCrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction)(
        hidden, weight, labels, bias
    )

    leaves = [t for t in (hidden, weight, bias) if t is not None]
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    hr, wr = copies[0], copies[1]
    br = copies[2] if with_bias else None
    logits = hr @ wr.T + (br if br is not None else 0)
    ref = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction)(logits, labels)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)

    g = torch.randn_like(ref)
    loss.backward(g)
    ref.backward(g)
    for ours, theirs in zip(leaves, copies):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-5)


def test_batched_hidden_and_z_loss():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (2, 5))
    loss = LinearCrossEntropyLoss(z_loss=1e-2)(hidden, weight, labels)
    logits = hidden @ weight.T
    lse = logits.logsumexp(-1)
    expected = (
        nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1)) + 1e-2 * (lse**2).mean()
    )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_bad_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        LinearCrossEntropyLoss(reduction="avg")
