"""ptft_fast.nn.LayerNorm / RMSNorm: drop-in for torch.nn.LayerNorm / RMSNorm."""

import pytest
import torch
from torch import nn

from ptft_fast.nn import LayerNorm, RMSNorm


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalized_shape": 32},
        {"normalized_shape": (3, 7), "eps": 1e-6},
        {"normalized_shape": 17, "bias": False},
        {"normalized_shape": 17, "elementwise_affine": False},
    ],
)
def test_layer_norm_matches_torch_both_ways(kwargs):
    ours, ref = LayerNorm(**kwargs), nn.LayerNorm(**kwargs)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    shape = ref.normalized_shape
    x = torch.randn(4, 5, *shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5)
    # and the other way round: torch's module takes our weights
    _randomize(ours)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"normalized_shape": 32},
        {"normalized_shape": (2, 9), "eps": 1e-6},
        {"normalized_shape": 8, "elementwise_affine": False},
    ],
)
def test_rms_norm_matches_torch_both_ways(kwargs):
    ours, ref = RMSNorm(**kwargs), nn.RMSNorm(**kwargs)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, *ref.normalized_shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    _randomize(ours)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_rms_norm_default_eps_follows_dtype():
    x = torch.randn(4, 16, dtype=torch.float64) * 1e-9  # eps dominates the mean square
    torch.testing.assert_close(RMSNorm(16).double()(x), nn.RMSNorm(16).double()(x))


def test_fused_residual_and_from_torch_shares_parameters():
    ref = _randomize(nn.LayerNorm(24))
    ours = LayerNorm.from_torch(ref)
    assert ours.weight is ref.weight and ours.bias is ref.bias
    x, r = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    y, h = ours(x, residual=r, return_residual=True)
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(y, ref(x + r), atol=1e-5, rtol=1e-5)
    rms = RMSNorm.from_weight(nn.Parameter(torch.randn(24)), 1e-6)
    torch.testing.assert_close(rms(x, residual=r), nn.functional.rms_norm(x + r, (24,), rms.weight, 1e-6))


def test_wrong_input_shape_names_the_rule():
    with pytest.raises(ValueError, match=r"normalized_shape \(8,\)"):
        LayerNorm(8)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="normalized_shape"):
        RMSNorm((2, 4))(torch.randn(4))


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_fused_dropout_in_training_only(cls):
    """norm(dropout(x) + residual): each dropped-in element of h - residual is 0 or x / (1 - p),
    y is the plain torch norm of that h; in eval mode no dropout at all."""
    torch.manual_seed(0)
    x, r = torch.randn(64, 32, dtype=torch.float64), torch.randn(64, 32, dtype=torch.float64)
    norm = cls(32, 1e-5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    plain = (
        nn.RMSNorm(32, 1e-5, dtype=torch.float64) if cls is RMSNorm else nn.LayerNorm(32, dtype=torch.float64)
    )
    plain.load_state_dict(norm.state_dict())
    p = 0.5
    y, h = norm(x, residual=r, return_residual=True, dropout_p=p)
    kept = (h - r).abs() > 0
    assert torch.allclose((h - r)[kept], x[kept] / (1 - p))
    assert 0.35 < kept.double().mean() < 0.65  # 2048 Bernoulli(0.5) draws: 7 sd either side
    torch.testing.assert_close(y, plain(h))
    norm.eval()
    y, h = norm(x, residual=r, return_residual=True, dropout_p=p)
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(y, plain(x + r))
