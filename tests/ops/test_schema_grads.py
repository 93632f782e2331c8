"""SchemaGrads: backward tuples built from an op's schema, each gradient at its input's position."""

import pytest
import torch

from ptft_fast.ops import triton_backend  # noqa: F401  (declares the ptft_triton ops)
from ptft_fast.ops.schema_grads import SchemaGrads, input_names


@torch.library.custom_op("ptft_test::scaled_sum", mutates_args=())
def _scaled_sum(a: torch.Tensor, scale: float, mask: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """a, b: (N,); returns scale · a + 3 · b."""
    return scale * a + 3.0 * b


@_scaled_sum.register_fake
def _(a, scale, mask, b):
    return torch.empty_like(a)


_GRADS = SchemaGrads("ptft_test::scaled_sum")


def _setup(ctx, inputs, output):
    ctx.scale = inputs[1]
    ctx.wants_b = _GRADS.needed(ctx, "b")


def _backward(ctx, grad):
    return _GRADS(a=grad * ctx.scale, b=grad * 3.0 if ctx.wants_b else None)


torch.library.register_autograd("ptft_test::scaled_sum", _backward, setup_context=_setup)


def test_each_gradient_lands_at_its_inputs_position():
    assert _GRADS.names == ("a", "scale", "mask", "b")
    g1, g2 = torch.ones(1), torch.full((1,), 2.0)
    assert _GRADS(b=g2, a=g1) == (g1, None, None, g2)
    assert _GRADS() == (None, None, None, None)


def test_unknown_input_name_is_an_error():
    with pytest.raises(TypeError, match=r"ptft_test::scaled_sum has no input 'c'"):
        _GRADS(c=torch.ones(1))


def test_autograd_through_the_helper_matches_the_math():
    a = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out = torch.ops.ptft_test.scaled_sum(a, 2.5, None, b)
    da, db = torch.autograd.grad(out.sum(), (a, b))
    assert torch.equal(da, torch.full_like(a, 2.5)) and torch.equal(db, torch.full_like(b, 3.0))
    frozen_b = torch.randn(4, dtype=torch.float64)
    (da,) = torch.autograd.grad(torch.ops.ptft_test.scaled_sum(a, 2.5, None, frozen_b).sum(), (a,))
    assert torch.equal(da, torch.full_like(a, 2.5))


def test_backend_schemas_name_the_inputs_the_backwards_use():
    """The names the triton backend's backwards pass must be inputs of their ops' schemas."""
    assert input_names("ptft_triton::attention_fwd")[:5] == ("q", "k", "v", "bias", "rel_table")
    assert input_names("ptft_triton::layer_norm_fwd")[:4] == ("x", "weight", "bias", "residual")
    assert input_names("ptft_triton::linear_cross_entropy_fwd")[:3] == ("hidden", "weight", "bias")
    assert input_names("ptft_triton::lora_linear_fwd")[:5] == ("x", "weight", "bias", "lora_a", "lora_b")
