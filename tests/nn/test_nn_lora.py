"""ptft_fast.nn.LoRALinear: init, frozen base, merge/unmerge."""

import math

import pytest
import torch
from installed import import_or_skip
from torch import nn

from ptft_fast.nn import LoRALinear


def _trained(r=4, alpha=8.0, bias=True) -> tuple[nn.Linear, LoRALinear]:
    base = nn.Linear(24, 40, bias=bias)
    lora = LoRALinear.from_linear(base, r=r, alpha=alpha)
    with torch.no_grad():
        lora.lora_B.normal_()  # as after some training
    return base, lora


def test_from_linear_starts_equal_to_base_and_shares_frozen_weights():
    base = nn.Linear(24, 40)
    expected = base(torch.ones(1, 24)).detach()
    lora = LoRALinear.from_linear(base, r=4, alpha=8.0, dropout=0.1)
    assert lora.weight is base.weight and lora.bias is base.bias
    assert not lora.weight.requires_grad and not lora.bias.requires_grad
    assert lora.lora_A.shape == (4, 24) and lora.lora_B.shape == (40, 4)
    assert lora.scaling == 2.0
    assert torch.count_nonzero(lora.lora_B) == 0
    bound = 1.0 / math.sqrt(24)  # kaiming-uniform(a=√5) on (r, in) is U(-1/√in, 1/√in)
    assert lora.lora_A.abs().max() <= bound and lora.lora_A.std() > bound / 4
    x = torch.randn(3, 5, 24)
    assert torch.equal(lora.eval()(x), base(x))  # B = 0: exactly the base output
    torch.testing.assert_close(lora(torch.ones(1, 24)), expected)


def test_forward_formula_and_gradients_only_reach_a_and_b():
    _, lora = _trained()
    x = torch.randn(6, 24, requires_grad=True)
    y = lora(x)
    expected = x @ lora.weight.T + lora.bias + lora.scaling * (x @ lora.lora_A.T) @ lora.lora_B.T
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    assert lora.weight.grad is None and lora.bias.grad is None
    assert lora.lora_A.grad is not None and lora.lora_B.grad is not None
    assert x.grad is not None
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_unmerge(dtype):
    _, lora = _trained(bias=False)
    lora = lora.to(dtype)
    x = torch.randn(7, 24, dtype=dtype)
    w0 = lora.weight.detach().clone()
    y = lora(x)
    lora.merge()
    assert lora.merged
    delta = lora.delta_weight().detach()
    torch.testing.assert_close(delta.double(), lora.scaling * (lora.lora_B.double() @ lora.lora_A.double()))
    assert torch.equal(lora.weight, w0 + delta)
    torch.testing.assert_close(lora(x), y)  # one matmul now, same output
    with pytest.raises(RuntimeError, match="already merged"):
        lora.merge()
    lora.unmerge()
    assert not lora.merged
    # (W + d) - d with the same rounded d both times: W up to one rounding of W + d
    bound = torch.finfo(dtype).eps * (w0.abs() + delta.abs())
    assert ((lora.weight - w0).abs() <= bound).all()
    torch.testing.assert_close(lora(x), y)
    with pytest.raises(RuntimeError, match="not merged"):
        lora.unmerge()


def test_dropout_only_in_training_and_repr():
    lora = LoRALinear.from_linear(nn.Linear(24, 40), r=2, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(4, 24)
    assert torch.equal(lora.eval()(x), lora(x))
    lora.train()
    assert not torch.equal(lora(x), lora(x))
    assert "r=2" in repr(lora) and "alpha=4.0" in repr(lora) and "scaling=2" in repr(lora)


def test_bad_arguments():
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear(4, 4, r=0)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoRALinear.from_linear(nn.Conv1d(2, 2, 1))


def test_matches_peft_lora_layer():
    peft = import_or_skip("peft")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(12, 20)

        def forward(self, x):
            return self.proj(x)

    peft_model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    theirs = peft_model.base_model.model.proj
    with torch.no_grad():
        theirs.lora_B["default"].weight.normal_()
    ours = LoRALinear.from_linear(nn.Linear(12, 20), r=4, alpha=8)
    ours.load_state_dict(
        {
            "weight": theirs.base_layer.weight,
            "bias": theirs.base_layer.bias,
            "lora_A": theirs.lora_A["default"].weight,
            "lora_B": theirs.lora_B["default"].weight,
        }
    )
    x = torch.randn(5, 12)
    torch.testing.assert_close(ours(x), theirs(x))
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours.weight, theirs.base_layer.weight)
