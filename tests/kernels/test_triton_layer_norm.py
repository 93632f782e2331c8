"""Triton layer norm / RMS norm vs the reference: forward, h, and every grad (x, residual, w, b)."""

from __future__ import annotations

import pytest
import torch
from kernel_tolerance import assert_rule
from triton_dropout_ref import assert_binomial, keep_mask

from ptft_fast.kernels._common import draw_seed
from ptft_fast.ops import layer_norm
from ptft_fast.ops.reference import layer_norm_ref

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _make(shape, dtype, affine, with_bias, with_res, device=DEV):
    hidden = shape[-1]
    x = torch.randn(shape, device=device, dtype=dtype)
    w = (1.0 + 0.5 * torch.randn(hidden, device=device)).to(dtype) if affine else None
    b = (0.3 * torch.randn(hidden, device=device)).to(dtype) if with_bias else None
    r = torch.randn(shape, device=device, dtype=dtype) if with_res else None
    return x, w, b, r


def _run(fn, x, w, b, r, x_scale, cast, grid=None, **kw):
    """fn on leaf copies cast to ``cast``; x is multiplied by ``x_scale`` (a fixed dropout mask)
    first. Returns outputs and grads of a fixed random projection of (y, h)."""
    leaves = [t.detach().to(cast).requires_grad_() if t is not None else None for t in (x, w, b, r)]
    lx, lw, lb, lr = leaves
    xin = lx if x_scale is None else lx * x_scale.to(cast)
    y, h = fn(xin, lw, lb, residual=lr, return_residual=True, **kw)
    g = torch.Generator(device="cpu").manual_seed(1)
    gy = torch.randn(y.shape, generator=g).to(grid or cast).to(y.device, cast)
    gh = torch.randn(h.shape, generator=g).to(grid or cast).to(h.device, cast)
    ((y * gy).sum() + (h * gh).sum()).backward()
    grads = {n: t.grad for n, t in zip(("dx", "dw", "db", "dres"), leaves, strict=True) if t is not None}
    return {"y": y.detach(), "h": h.detach(), **grads}


def check(shape, dtype, *, rms=False, affine=True, with_bias=True, with_res=True, dropout_p=0.0, eps=1e-5):
    x, w, b, r = _make(shape, dtype, affine, with_bias, with_res)
    kw = dict(rms=rms, eps=eps)
    mask_scale = None
    if dropout_p > 0.0:
        # The mask the kernel promises for the seed the op draws after manual_seed(7), regenerated
        # by an independent Philox over the (rows, H) elements of x; the references get
        # x ∘ keep / (1 - p).
        torch.manual_seed(7)
        keep = keep_mask(draw_seed(), x.numel() // x.shape[-1], x.shape[-1], dropout_p).view(x.shape)
        assert_binomial(keep, dropout_p)
        mask_scale = keep.to(DEV).float() / (1.0 - dropout_p)
        torch.manual_seed(7)

    def kernel(xin, lw, lb, **k):
        return layer_norm(xin, lw, lb, dropout_p=dropout_p, backend="triton", **k)

    # The kernel applies dropout itself: feed it x, and the references x * mask / (1 - p).
    out = _run(kernel, x, w, b, r, None, dtype, dtype, **kw)
    ref32 = _run(
        lambda *a, **k: layer_norm_ref(*a, upcast=True, **k),
        x,
        w,
        b,
        r,
        mask_scale,
        torch.float32,
        dtype,
        **kw,
    )
    low = None
    if dtype != torch.float32:
        low = _run(
            lambda *a, **k: layer_norm_ref(*a, upcast=False, **k), x, w, b, r, mask_scale, dtype, dtype, **kw
        )
    for name in out:
        assert_rule(
            f"{name} {shape} {dtype}",
            out[name].float(),
            ref32[name],
            None if low is None else low[name].float(),
        )


SHAPES = [(1, 1), (3, 7), (5, 31), (2, 3, 24), (17, 65), (4, 127), (3, 1000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rms", [False, True])
def test_fp32(shape, rms):
    check(shape, torch.float32, rms=rms)


@pytest.mark.parametrize("rms", [False, True])
def test_no_affine_no_residual(rms):
    check((6, 40), torch.float32, rms=rms, affine=False, with_bias=False, with_res=False)
    check((6, 40), torch.float32, rms=rms, with_bias=False, with_res=False)


@pytest.mark.parametrize("rms", [False, True])
def test_dropout(rms):
    check((9, 33), torch.float32, rms=rms, dropout_p=0.3)
    check((9, 33), torch.float32, rms=rms, dropout_p=0.5, with_res=False)


def test_fp16():
    check((13, 96), torch.float16)
    check((13, 96), torch.float16, rms=True)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_statistics(p):
    """dropout(ones) from the kernel: every value is 0 or exactly 1/(1 - p), the kept count is
    binomial, and the kept positions are the independently regenerated mask's."""
    x = torch.ones(64, 97, device=DEV)
    torch.manual_seed(11)
    keep = keep_mask(draw_seed(), 64, 97, p)
    torch.manual_seed(11)
    _, h = layer_norm(x, None, None, return_residual=True, dropout_p=p, backend="triton")
    h = h.cpu()
    scale = torch.tensor(1.0) / (1.0 - p)
    assert torch.equal(h, torch.where(keep, scale, 0.0)), "mask or 1/(1 - p) scale differs"
    assert_binomial(h != 0, p)


def test_dropout_reproducible_and_plain_output():
    x = torch.randn(5, 24, device=DEV)
    torch.manual_seed(3)
    y1 = layer_norm(x, None, dropout_p=0.4, backend="triton")
    torch.manual_seed(3)
    y2 = layer_norm(x, None, dropout_p=0.4, backend="triton")
    assert isinstance(y1, torch.Tensor) and torch.equal(y1, y2)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 768), (2048, 1024), (1000, 4097), (33, 8192)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rms", [False, True])
def test_gpu(shape, dtype, rms):
    check(shape, dtype, rms=rms)
    check(shape, dtype, rms=rms, dropout_p=0.1)


def test_non_contiguous_inputs():
    from kernel_tolerance import compare_with_grads

    x = torch.randn(40, 6, device=DEV).t().requires_grad_()  # (6, 40) transposed view
    inputs = {
        "x": x,
        "weight": torch.randn(80, device=DEV)[::2].requires_grad_(),
        "bias": torch.randn(80, device=DEV)[1::2].requires_grad_(),
        "residual": torch.randn(6, 80, device=DEV)[:, ::2].requires_grad_(),
    }
    compare_with_grads("ln", lambda **a: layer_norm(**a, backend="triton"), layer_norm_ref, inputs)


@pytest.mark.parametrize("rms", [False, True])
def test_plain_call_backward(rms):
    # no residual, no dropout, y only: the kernel's h output is a placeholder that gets no grad
    from kernel_tolerance import compare_with_grads

    inputs = {
        "x": torch.randn(3, 5, 48, device=DEV).requires_grad_(),
        "weight": torch.randn(48, device=DEV).requires_grad_(),
        "bias": torch.randn(48, device=DEV).requires_grad_(),
        "rms": rms,
    }
    compare_with_grads("ln plain", lambda **a: layer_norm(**a, backend="triton"), layer_norm_ref, inputs)
