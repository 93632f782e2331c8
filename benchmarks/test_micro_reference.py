"""pytest-benchmark microbenchmarks of the CPU reference path (``backend="torch"``), fwd+bwd.

Small fixed shapes (a few ms each), one torch thread (a shared CPU's other jobs would otherwise
stall every OpenMP region), fixed seeds. Run from the repo root::

    pytest benchmarks/ --benchmark-only                    # or: make bench-micro
    make bench-micro-save                                  # new baseline under benchmarks/results/pytest-benchmark/
    make bench-micro-compare                               # fails on a median regression > 10 % vs the latest saved run

With ``--benchmark-disable`` each benchmark runs once as a plain test (``make test`` does that).
"""

import pytest
import torch

from ptft_fast import ops
from ptft_fast.benchmarks.kernel_providers import fwd_bwd

BACKEND = "torch"  # the pure-PyTorch reference path (ptft_fast.ops.dispatch)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def _leaf(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).requires_grad_()


def test_layer_norm_residual_fwd_bwd(benchmark):
    """x, residual: (N=512, H=256); weight, bias: (256,)."""
    x, res, w, b = _leaf(512, 256), _leaf(512, 256), _leaf(256), _leaf(256)
    step = fwd_bwd(lambda: ops.layer_norm(x, w, b, residual=res, backend=BACKEND), (x, res, w, b))
    grads = benchmark(step)
    assert all(g.shape == t.shape for g, t in zip(grads, (x, res, w, b)))


def test_attention_causal_fwd_bwd(benchmark):
    """q, k, v: (B=2, T=128, H=4, D=32), causal."""
    q, k, v = _leaf(2, 128, 4, 32), _leaf(2, 128, 4, 32), _leaf(2, 128, 4, 32)
    step = fwd_bwd(lambda: ops.attention(q, k, v, causal=True, backend=BACKEND), (q, k, v))
    grads = benchmark(step)
    assert grads[0].shape == q.shape


def test_linear_cross_entropy_masked_fwd_bwd(benchmark):
    """hidden: (N=256, H=128); weight: (V=4096, H); labels: (256,), 15 % labeled, rest -100."""
    h, w = _leaf(256, 128), _leaf(4096, 128, scale=0.02)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4096, (256,), generator=gen)
    labels = labels.masked_fill(torch.rand(256, generator=gen) >= 0.15, -100)
    step = fwd_bwd(lambda: ops.linear_cross_entropy(h, w, labels, backend=BACKEND), (h, w))
    grads = benchmark(step)
    assert grads[1].shape == w.shape


def test_lora_linear_fwd_bwd(benchmark):
    """x: (N=512, in=256); weight: (out=256, 256) frozen, bias: (256,); A: (r=8, 256), B: (256, 8)."""
    x, a, b = _leaf(512, 256), _leaf(8, 256, scale=0.1), _leaf(256, 8, scale=0.1)
    weight, bias = torch.randn(256, 256) * 0.05, torch.randn(256)
    step = fwd_bwd(lambda: ops.lora_linear(x, weight, bias, a, b, 2.0, backend=BACKEND), (x, a, b))
    grads = benchmark(step)
    assert grads[1].shape == a.shape
