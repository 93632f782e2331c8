"""Triton masked-token linear cross-entropy vs the reference: loss and grads of hidden, W, b."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_tolerance import assert_rule, on_grid

from ptft_fast.kernels import cross_entropy as ce_kernels
from ptft_fast.ops import linear_cross_entropy
from ptft_fast.ops.reference import linear_cross_entropy_ref

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _make(n_shape, hidden, vocab, labeled, with_bias, device=DEV):
    h = torch.randn(*n_shape, hidden, device=device)
    w = torch.randn(vocab, hidden, device=device) / hidden**0.5
    b = torch.randn(vocab, device=device) if with_bias else None
    labels = torch.randint(0, vocab, n_shape, device=device)
    labels[torch.rand(n_shape, device=device) >= labeled] = -100
    return h, w, b, labels


def _run(fn, h, w, b, labels, cast, reduction, grid=None, **kw):
    leaves = [t.detach().to(cast).requires_grad_() for t in (h, w, b) if t is not None]
    lh, lw, *lb = leaves
    out = fn(lh, lw, labels, lb[0] if lb else None, reduction=reduction, **kw)
    # reduction none: weight each row differently so wrong per-row grads show
    g = (torch.rand(out.shape, generator=torch.Generator().manual_seed(1)) + 0.5).to(grid or cast)
    g = g.to(out.device, cast)
    grads = torch.autograd.grad(out, leaves, g)
    names = ("dh", "dw", "db")
    return {"loss": out.detach(), **dict(zip(names, grads, strict=False))}


def check(
    n_shape, hidden, vocab, *, labeled=0.4, with_bias=True, dtype=torch.float32, reduction="mean", **kw
):
    h, w, b, labels = _make(n_shape, hidden, vocab, labeled, with_bias)
    h, w, b = on_grid(dtype, (h, w, b))

    def kernel(*a, **k):
        return linear_cross_entropy(*a, backend="triton", **k)

    out = _run(kernel, h, w, b, labels, dtype, reduction, dtype, **kw)
    ref32 = _run(
        lambda *a, **k: linear_cross_entropy_ref(*a, upcast=True, **k),
        h,
        w,
        b,
        labels,
        torch.float32,
        reduction,
        dtype,
        **kw,
    )
    low = None
    if dtype != torch.float32:
        low = _run(
            lambda *a, **k: linear_cross_entropy_ref(*a, upcast=False, **k),
            h,
            w,
            b,
            labels,
            dtype,
            reduction,
            dtype,
            **kw,
        )
    for name in out:
        lo = None if low is None else low[name].float()
        assert_rule(f"{name} {reduction}", out[name].float(), ref32[name], lo)


@pytest.mark.parametrize("shape", [((1,), 1, 1), ((7,), 24, 67), ((2, 31), 65, 31), ((63,), 17, 64)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fp32(shape, reduction):
    check(*shape, reduction=reduction, labeled=1.0 if shape[0] == (1,) else 0.4)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_smoothing_and_z_loss(reduction):
    check((3, 11), 40, 53, reduction=reduction, label_smoothing=0.1, z_loss=1e-3)
    check((19,), 32, 33, reduction=reduction, label_smoothing=0.25, with_bias=False)


def test_all_labeled_and_none_labeled():
    check((37,), 24, 50, labeled=1.0)
    h, w, b, labels = _make((9,), 24, 50, 0.0, True)
    for t in (h, w, b):
        t.requires_grad_()
    loss = linear_cross_entropy(h, w, labels, b, reduction="sum", backend="triton")
    loss.backward()
    assert loss.item() == 0.0
    for t in (h, w, b):  # dW and db are written (zeros) even when no row reaches a matmul
        assert torch.equal(t.grad, torch.zeros_like(t)), t.shape


@pytest.mark.parametrize("labeled", [0.0, 0.45, 1.0])
def test_chunked_backward(monkeypatch, labeled):
    """A chunk buffer of one row block: several chunks accumulate dW/db (the first stores, later
    ones add) and chunks past the labeled rows do nothing; V = 67 is not a multiple of the block."""
    monkeypatch.setattr(ce_kernels, "CHUNK_BYTES", 1)
    assert ce_kernels.chunk_rows(70, 67, 4, 16) == 16
    check((70,), 24, 67, labeled=labeled, reduction="none", label_smoothing=0.1, z_loss=1e-3)
    # (a mean over no labeled row is 0/0, as in F.cross_entropy: sum instead)
    check((2, 35), 24, 67, labeled=labeled, with_bias=False, reduction="mean" if labeled else "sum")


def test_chunk_rows_bounds_the_buffer():
    budget = ce_kernels.CHUNK_BYTES
    for n, vocab, size in ((16384, 30522, 2), (8192, 50257, 2), (8192, 50257, 4), (7, 67, 4), (1, 1, 4)):
        rows = ce_kernels.chunk_rows(n, vocab, size, 128)
        assert rows % 128 == 0 and rows >= 128 and rows <= -(-n // 128) * 128
        assert rows == 128 or rows * vocab * size <= budget


def test_matches_full_logits_cross_entropy():
    h, w, b, labels = _make((5, 13), 32, 61, 0.5, True)
    ours = linear_cross_entropy(h, w, labels, b, label_smoothing=0.1, backend="triton")
    full = F.cross_entropy((h @ w.T + b).reshape(-1, 61), labels.reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)


def test_fp16():
    check((29,), 48, 67, dtype=torch.float16)
    check((29,), 48, 67, dtype=torch.float16, reduction="none", z_loss=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("labeled", [0.15, 1.0])
def test_gpu_real_shapes(dtype, labeled):
    check((4, 511), 768, 30522, labeled=labeled, dtype=dtype)
    check(
        (1023,), 1024, 32003, labeled=labeled, dtype=dtype, reduction="none", label_smoothing=0.1, z_loss=1e-4
    )


def test_non_contiguous_inputs():
    from kernel_tolerance import compare_with_grads

    labels = torch.randint(0, 37, (9, 3), device=DEV).t()
    labels[0, :4] = -100
    inputs = {
        "hidden": torch.randn(9, 3, 24, device=DEV).transpose(0, 1).requires_grad_(),
        "weight": (torch.randn(37, 48, device=DEV)[:, ::2] / 5).requires_grad_(),
        "labels": labels,
        "bias": torch.randn(74, device=DEV)[::2].requires_grad_(),
        "reduction": "none",
    }
    kernel = lambda **a: linear_cross_entropy(**a, backend="triton")  # noqa: E731
    compare_with_grads("linear_cross_entropy", kernel, linear_cross_entropy_ref, inputs)
