"""Hypothesis fuzzing of shapes: the references agree with plain PyTorch for any valid shape."""

import math
from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ptft_fast import ops
from ptft_fast.ops import torch_backend

SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(
    n=st.integers(1, 40),
    hidden=st.integers(1, 24),
    vocab=st.integers(1, 70),
    ignored=st.floats(0.0, 1.0),
    smoothing=st.sampled_from([0.0, 0.1]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
    small=st.booleans(),
)
def test_linear_cross_entropy_any_shape(n, hidden, vocab, ignored, smoothing, reduction, seed, small):
    # the torch backend's small path (F.cross_entropy) and its chunked algorithm (threshold 0)
    threshold = torch_backend.SMALL_LOGITS if small else 0
    with mock.patch.object(torch_backend, "SMALL_LOGITS", threshold):
        _check_linear_cross_entropy(n, hidden, vocab, ignored, smoothing, reduction, seed)


def _check_linear_cross_entropy(n, hidden, vocab, ignored, smoothing, reduction, seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < ignored] = -100
    got = ops.linear_cross_entropy(h, w, labels, label_smoothing=smoothing, reduction=reduction)
    want = F.cross_entropy(h @ w.T, labels, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(got, want, equal_nan=True)  # all rows ignored + mean: NaN like torch
    if reduction != "mean" or (labels != -100).any():
        g1 = torch.autograd.grad(got.sum(), (h, w))
        g2 = torch.autograd.grad(want.sum(), (h, w))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)


@SETTINGS
@given(
    batch=st.integers(1, 3),
    tq=st.integers(1, 12),
    tk=st.integers(1, 12),
    hkv=st.integers(1, 3),
    groups=st.integers(1, 3),
    dim=st.integers(1, 17),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_attention_any_shape(batch, tq, tk, hkv, groups, dim, causal, seed):
    gen = torch.Generator().manual_seed(seed)
    hq = hkv * groups
    q = torch.randn(batch, tq, hq, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, tk, hkv, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, tk, hkv, dim, generator=gen, dtype=torch.float64)
    got = ops.attention(q, k, v, causal=causal)
    kk, vv = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(dim)
    if causal:
        allowed = torch.arange(tk)[None, :] <= torch.arange(tq)[:, None] + (tk - tq)
        s = s.masked_fill(~allowed, float("-inf"))
    want = torch.einsum("bhqk,bkhd->bqhd", torch.nan_to_num(s.softmax(-1)), vv)
    torch.testing.assert_close(got, want)


@SETTINGS
@given(rows=st.integers(1, 30), hidden=st.integers(1, 64), rms=st.booleans(), seed=st.integers(0, 2**16))
def test_layer_norm_any_shape(rows, hidden, rms, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen, dtype=torch.float64)
    w = torch.randn(hidden, generator=gen, dtype=torch.float64)
    got = ops.layer_norm(x, w, None, rms=rms)
    if rms:
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    else:
        want = F.layer_norm(x, (hidden,), w, None)
    torch.testing.assert_close(got, want)
