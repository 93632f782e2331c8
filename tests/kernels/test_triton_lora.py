"""Triton LoRA linear vs the reference: output and grads of x, A, B (and W, b when trainable)."""

from __future__ import annotations

import pytest
import torch
from kernel_tolerance import assert_rule, on_grid
from triton_dropout_ref import assert_binomial, keep_mask

from ptft_fast.kernels._common import draw_seed
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
        # the mask the kernels promise for the seed the op draws after manual_seed(11), regenerated
        # by an independent Philox over x's (rows, in) elements; the references see x ∘ keep / (1 - p)
        torch.manual_seed(11)
        rows = t["x"].numel() // n_in
        keep = keep_mask(draw_seed(), rows, n_in, p).view(t["x"].shape)
        assert_binomial(keep, p)
        x_scale = keep.to(DEV).float() / (1.0 - p)
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
    check((2, 37), 67, 24, 4, p=p)  # several row blocks: the dA reduction's row splits


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


def test_da_reduction_fills_an_h100():
    """At in = 768 the dA reduction (6 column blocks of 128) is split over rows so that it launches
    at least as many programs as an H100 has SMs (the launch is recorded on meta tensors for an
    H100 target, not run)."""
    from ptft_fast.kernels import lora as lora_kernels
    from ptft_fast.kernels._common import H100, recording_launches

    def meta(*shape):
        return torch.empty(shape, dtype=torch.bfloat16, device="meta")

    with recording_launches(H100) as launches:
        lora_kernels.lora_linear_bwd(meta(8192, 768), meta(8192, 768), meta(8192, 16), meta(768, 768), meta(16, 768),
                              meta(768, 16), 2.0, 0.1, 1234)  # fmt: skip
    (da,) = [launch for launch in launches if launch.kernel is lora_kernels._lora_linear_da_kernel]
    cols, splits = da.grid
    assert cols == 6 and cols * splits >= H100.sm_count, da.grid
    assert da.kwargs["rows_per_split"] * splits >= 8192
