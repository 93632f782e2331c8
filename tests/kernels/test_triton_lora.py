"""Triton LoRA linear vs the reference: output and grads of x, A, B (and W, b when trainable)."""

from __future__ import annotations

import pytest
import torch
from kernel_tolerance import assert_rule, on_grid

from ptft_fast.ops import lora_linear
from ptft_fast.ops.reference import lora_linear_ref

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _make(lead, n_in, n_out, rank, with_bias, device=DEV):
    return {
        "x": torch.randn(*lead, n_in, device=device),
        "weight": torch.randn(n_out, n_in, device=device) / n_in**0.5,
        "bias": torch.randn(n_out, device=device) if with_bias else None,
        "lora_a": torch.randn(rank, n_in, device=device) / n_in**0.5,
        "lora_b": torch.randn(n_out, rank, device=device),
    }


def _run(fn, t, cast, scaling, train_base, x_scale=None, grid=None):
    trainable = {"x", "lora_a", "lora_b"} | ({"weight", "bias"} if train_base else set())
    leaves = {
        n: (v.detach().to(cast).requires_grad_(n in trainable) if v is not None else None)
        for n, v in t.items()
    }
    args = dict(leaves)
    out = fn(**args, scaling=scaling, x_scale=x_scale)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(grid or cast)
    g = g.to(out.device, cast)
    names = [n for n in leaves if n in trainable and leaves[n] is not None]
    grads = torch.autograd.grad(out, [leaves[n] for n in names], g)
    return {"y": out.detach(), **{f"d{n}": gr for n, gr in zip(names, grads, strict=True)}}


def _kernel(p):
    def fn(x, weight, bias, lora_a, lora_b, scaling, x_scale):
        return lora_linear(x, weight, bias, lora_a, lora_b, scaling, dropout_p=p, backend="triton")

    return fn


def _ref(upcast):
    def fn(x, weight, bias, lora_a, lora_b, scaling, x_scale):
        if x_scale is None:
            return lora_linear_ref(x, weight, bias, lora_a, lora_b, scaling, upcast=upcast)
        # dropout with the kernel's mask: the low-rank path sees x ∘ keep / (1 - p)
        base = torch.nn.functional.linear(x, weight, bias)
        return base + scaling * ((x * x_scale) @ lora_a.T) @ lora_b.T

    return fn


def check(
    lead, n_in, n_out, rank, *, dtype=torch.float32, with_bias=True, scaling=2.0, train_base=False, p=0.0
):
    t = on_grid(dtype, _make(lead, n_in, n_out, rank, with_bias))
    x_scale = None
    if p > 0.0:
        # the kernel's mask for the seed drawn after manual_seed(11), read through A = I, B = I
        torch.manual_seed(11)
        eye = torch.eye(n_in, device=DEV)
        x_scale = lora_linear(torch.ones_like(t["x"]), torch.zeros(n_in, n_in, device=DEV), None, eye, eye, 1.0,
                              dropout_p=p, backend="triton")  # fmt: skip
        assert abs((x_scale > 0).float().mean().item() - (1 - p)) < 0.2
        torch.manual_seed(11)
    out = _run(_kernel(p), t, dtype, scaling, train_base, grid=dtype)
    ref32 = _run(_ref(True), t, torch.float32, scaling, train_base, x_scale, grid=dtype)
    low = (
        None
        if dtype == torch.float32
        else _run(_ref(False), t, dtype, scaling, train_base, x_scale, grid=dtype)
    )
    for name in out:
        lo = None if low is None else low[name].float()
        assert_rule(f"{name} {lead}", out[name].float(), ref32[name], lo)


@pytest.mark.parametrize(
    "shape",
    [((1,), 1, 1, 1), ((7,), 24, 40, 4), ((2, 17), 65, 31, 8), ((63,), 33, 64, 16), ((5,), 40, 24, 3)],
)
def test_fp32(shape):
    check(*shape)


def test_no_bias_and_trainable_base():
    check((9,), 32, 48, 8, with_bias=False)
    check((9,), 32, 48, 8, train_base=True)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout(p):
    check((13,), 40, 24, 4, p=p)


def test_fp16():
    check((31,), 64, 48, 16, dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_real_shapes(dtype):
    check((4, 511), 4096, 4096, 16, dtype=dtype)
    check((1023,), 1024, 4095, 64, dtype=dtype, p=0.1)


def test_non_contiguous_inputs():
    from kernel_tolerance import compare_with_grads

    inputs = {
        "x": torch.randn(24, 7, device=DEV).t().requires_grad_(),
        "weight": torch.randn(24, 32, device=DEV).t()[::2] / 5,  # (out=16, in=24), strided
        "bias": torch.randn(32, device=DEV)[::2],
        "lora_a": torch.randn(24, 4, device=DEV).t().requires_grad_(),
        "lora_b": torch.randn(4, 16, device=DEV).t().requires_grad_(),
        "scaling": 0.5,
    }
    kernel = lambda **a: lora_linear(**a, backend="triton")  # noqa: E731
    compare_with_grads("lora", kernel, lora_linear_ref, inputs)
