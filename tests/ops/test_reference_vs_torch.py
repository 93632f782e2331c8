"""References vs plain PyTorch compositions in fp32 over awkward shapes (1, primes, 2^k − 1)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ptft_fast import ops
from ptft_fast.ops import reference as R
from ptft_fast.ops import torch_backend
from ptft_fast.ops.attention_args import AttentionArgs

AWKWARD = [1, 7, 31, 127]


@pytest.fixture(params=["small", "chunked"])
def linear_cross_entropy_path(request, monkeypatch):
    """The torch backend's cross-entropy both ways: F.linear + F.cross_entropy at most
    SMALL_LOGITS logits, the chunked algorithm beyond (forced here by a threshold of 0)."""
    if request.param == "chunked":
        monkeypatch.setattr(torch_backend, "SMALL_LOGITS", 0)
    return request.param


def _grads(out, inputs, seed_grad=None):
    g = torch.randn_like(out) if seed_grad is None else seed_grad
    return torch.autograd.grad((out * g).sum(), inputs)


@pytest.mark.parametrize("rows", AWKWARD)
@pytest.mark.parametrize("hidden", [1, 13, 63, 768])
@pytest.mark.parametrize("rms", [False, True])
def test_layer_norm_matches_torch(rows, hidden, rms):
    x = torch.randn(rows, hidden, requires_grad=True)
    res = torch.randn(rows, hidden, requires_grad=True)
    w, b = torch.randn(hidden, requires_grad=True), torch.randn(hidden, requires_grad=True)
    y, h = ops.layer_norm(x, w, b, 1e-5, residual=res, rms=rms, return_residual=True)
    s = x + res
    if rms:
        want = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5) * w + b
    else:
        want = F.layer_norm(s, (hidden,), w, b, 1e-5)
    torch.testing.assert_close(h, s)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(y)
    for a, e in zip(_grads(y, (x, res, w, b), g), _grads(want, (x, res, w, b), g)):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_layer_norm_dropout_is_inverted_dropout_before_residual():
    x = torch.ones(64, 32)
    res = torch.zeros(64, 32)
    _, h = ops.layer_norm(x, None, None, residual=res, dropout_p=0.5, return_residual=True)
    kept = h != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(h[kept], torch.full_like(h[kept], 2.0))


def _manual_attention(q, k, v, causal, mask, bias, scale, allowed=None):
    """allowed: (B, Tq, Tk) bool, query i may see key j — instead of causal and mask."""
    hq, hkv = q.shape[2], k.shape[2]
    k, v = k.repeat_interleave(hq // hkv, 2), v.repeat_interleave(hq // hkv, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        s = s + bias
    if allowed is not None:
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        return torch.einsum("bhqk,bkhd->bqhd", torch.nan_to_num(s.softmax(-1), nan=0.0), v)
    allowed = torch.ones(s.shape[-2:], dtype=torch.bool)
    if causal:
        i = torch.arange(q.shape[1])[:, None]
        j = torch.arange(k.shape[1])[None, :]
        allowed = j <= i + (k.shape[1] - q.shape[1])
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.nan_to_num(s.softmax(-1), nan=0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("tq,tk", [(1, 1), (7, 7), (31, 31), (5, 13), (13, 5), (1, 31)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 1), (6, 2)])
@pytest.mark.parametrize("extras", ["none", "mask", "bias"])
def test_attention_matches_manual(tq, tk, causal, heads, extras):
    b, d = 2, 9
    hq, hkv = heads
    q = torch.randn(b, tq, hq, d, requires_grad=True)
    k, v = torch.randn(b, tk, hkv, d, requires_grad=True), torch.randn(b, tk, hkv, d, requires_grad=True)
    mask = bias = None
    if extras == "mask":
        mask = torch.rand(b, tk) > 0.3
        mask[:, 0] = True
    if extras == "bias":
        bias = torch.randn(b, hq, tq, tk, requires_grad=True)
    out = ops.attention(q, k, v, causal=causal, key_padding_mask=mask, attn_bias=bias)
    want = _manual_attention(q, k, v, causal, mask, bias, 1 / math.sqrt(d))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    inputs = (q, k, v) + ((bias,) if bias is not None else ())
    g = torch.randn_like(out)
    for a, e in zip(_grads(out, inputs, g), _grads(want, inputs, g)):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_varlen_equals_per_sequence(causal):
    lens = [1, 7, 3, 16]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), 4, 8) for _ in range(3))
    out = ops.attention(q, k, v, causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu)
    for i in range(len(lens)):
        s = slice(cu[i].item(), cu[i + 1].item())
        one = F.scaled_dot_product_attention(
            q[s].transpose(0, 1), k[s].transpose(0, 1), v[s].transpose(0, 1), is_causal=causal
        ).transpose(0, 1)
        torch.testing.assert_close(out[s], one, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tq,tk", [(7, 7), (5, 13), (13, 5), (1, 9)])
@pytest.mark.parametrize("mask", [False, True])
def test_attention_prefix_lm_matches_manual(tq, tk, mask):
    """prefix_lengths: query i sees key j iff j <= i + (Tk - Tq) or j < prefix_lengths[b] — an
    explicit per-row boolean mask on the manual composition (prefixes 0, inside, beyond the keys)."""
    b, hq, hkv, d = 3, 4, 2, 8
    q = torch.randn(b, tq, hq, d, requires_grad=True)
    k, v = torch.randn(b, tk, hkv, d, requires_grad=True), torch.randn(b, tk, hkv, d, requires_grad=True)
    prefix = torch.tensor([0, min(3, tk), tk + 4])
    kpm = (torch.rand(b, tk) > 0.3) if mask else None
    i, j = torch.arange(tq)[:, None], torch.arange(tk)[None, :]
    allowed = (j <= i + (tk - tq))[None] | (j[None] < prefix[:, None, None])  # (B, Tq, Tk)
    if kpm is not None:
        allowed = allowed & kpm[:, None, :]
    out = ops.attention(q, k, v, causal=True, key_padding_mask=kpm, prefix_lengths=prefix)
    want = _manual_attention(q, k, v, False, None, None, 1 / math.sqrt(d), allowed=allowed)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    for a, e in zip(_grads(out, (q, k, v), g), _grads(want, (q, k, v), g)):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_attention_prefix_lm_varlen_equals_per_sequence():
    """Varlen: each packed sequence gets its own prefix, in its own key positions."""
    lens, prefix = [1, 7, 3, 16], torch.tensor([1, 4, 0, 9])
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), 4, 8) for _ in range(3))
    out = ops.attention(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu, prefix_lengths=prefix)
    for n in range(len(lens)):
        s = slice(cu[n].item(), cu[n + 1].item())
        one = ops.attention(q[None, s], k[None, s], v[None, s], causal=True, prefix_lengths=prefix[n : n + 1])
        torch.testing.assert_close(out[s], one[0], atol=1e-5, rtol=1e-4)


def test_attention_fully_masked_query_gives_zeros_and_finite_grads():
    q = torch.randn(1, 3, 2, 4, requires_grad=True)
    k, v = torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4)
    out = ops.attention(
        q, k, v, causal=True, key_padding_mask=torch.tensor([[False, False, False, True, True]])
    )
    # Tk - Tq = 2: query 0 sees keys 0..2, all padded.
    assert torch.all(out[0, 0] == 0)
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("n", AWKWARD)
@pytest.mark.parametrize("vocab", [2, 31, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_matches_full_logits(n, vocab, reduction, linear_cross_entropy_path):
    hidden = torch.randn(n, 16, requires_grad=True)
    weight = torch.randn(vocab, 16, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (n,))
    if n > 1:
        labels[torch.rand(n) < 0.5] = -100
    out = ops.linear_cross_entropy(hidden, weight, labels, bias, label_smoothing=0.1, reduction=reduction)
    want = F.cross_entropy(hidden @ weight.T + bias, labels, label_smoothing=0.1, reduction=reduction)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    for a, e in zip(_grads(out, (hidden, weight, bias), g), _grads(want, (hidden, weight, bias), g)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4)


def test_linear_cross_entropy_never_materializes_full_logits(monkeypatch):
    monkeypatch.setattr(torch_backend, "SMALL_LOGITS", 0)  # the chunked path even at this size
    monkeypatch.setattr(R, "LINEAR_CROSS_ENTROPY_BLOCK_ELEMS", 64)
    monkeypatch.setattr(R, "LINEAR_CROSS_ENTROPY_VOCAB_CHUNK", 16)
    seen = []
    real_matmul, real_mm = torch.Tensor.__matmul__, torch.mm

    def spy(real):
        def call(a, b, **kw):
            out = real(a, b, **kw)
            seen.append(tuple(out.shape))
            return out

        return call

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy(real_matmul))
    monkeypatch.setattr(torch, "mm", spy(real_mm))
    hidden, weight = torch.randn(40, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    labels = torch.randint(0, 50, (40,))
    labels[:30] = -100  # only 10 labeled rows may reach the projection
    loss = ops.linear_cross_entropy(hidden, weight, labels)
    monkeypatch.setattr(torch.Tensor, "__matmul__", real_matmul)
    monkeypatch.setattr(torch, "mm", real_mm)
    want = F.cross_entropy(hidden @ weight.T, labels)
    torch.testing.assert_close(loss, want)
    assert seen and all(rows <= 10 and cols <= 16 for rows, cols in seen)


def test_small_cross_entropy_path_is_taken_up_to_small_logits_only(monkeypatch):
    monkeypatch.setattr(torch_backend, "SMALL_LOGITS", 100)
    calls = []
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    hidden, labels = torch.randn(10, 4), torch.randint(0, 10, (10,))
    ops.linear_cross_entropy(hidden, torch.randn(10, 4), labels)  # 10 x 10 = 100 logits
    assert calls == [(10, 10)]
    ops.linear_cross_entropy(hidden, torch.randn(11, 4), labels)  # 110 logits: chunked
    ops.linear_cross_entropy(hidden, torch.randn(10, 4), labels, z_loss=1e-3)  # z-loss: chunked
    assert calls == [(10, 10)]


def test_linear_cross_entropy_z_loss_adds_lse_squared():
    hidden, weight = torch.randn(9, 5), torch.randn(12, 5)
    labels = torch.randint(0, 12, (9,))
    base = ops.linear_cross_entropy(hidden, weight, labels, reduction="none")
    with_z = ops.linear_cross_entropy(hidden, weight, labels, z_loss=1e-2, reduction="none")
    torch.testing.assert_close(with_z - base, 1e-2 * torch.logsumexp(hidden @ weight.T, -1) ** 2)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 13, 31, 3), (2, 5, 127, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_lora_linear_matches_composition(shape, with_bias):
    *lead, d_in, rank = shape
    d_out = 11
    x = torch.randn(*lead, d_in, requires_grad=True)
    w = torch.randn(d_out, d_in)
    bias = torch.randn(d_out) if with_bias else None
    a, b = torch.randn(rank, d_in, requires_grad=True), torch.randn(d_out, rank, requires_grad=True)
    out = ops.lora_linear(x, w, bias, a, b, 0.5)
    want = F.linear(x, w, bias) + 0.5 * (x @ a.T) @ b.T
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    for got, exp in zip(_grads(out, (x, a, b), g), _grads(want, (x, a, b), g)):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal,prefix", [(False, False), (True, False), (True, True)])
def test_varlen_attention_by_length_groups_equals_the_padded_reference(causal, prefix, monkeypatch):
    """The torch backend runs CPU varlen self-attention one length group at a time: values and
    gradients equal the reference's single call padded to the longest sequence (GQA, sequences
    sharing a group and alone in theirs, a 1-token one), with one reference call per group."""
    lens = [1, 7, 5, 16, 3, 40, 6, 2]  # groups (length in (2^(g-1), 2^g]): 0, 3, 3, 4, 2, 6, 3, 1
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lens), 4, 8, requires_grad=True)
    k, v = (torch.randn(sum(lens), 2, 8, requires_grad=True) for _ in range(2))
    kw = dict(causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=40, max_seqlen_k=40)
    if prefix:
        kw["prefix_lengths"] = torch.tensor([1, 4, 0, 9, 3, 17, 6, 1])
    want = R.attention_ref(q, k, v, **kw)
    calls = []
    ref = R.attention_ref
    monkeypatch.setattr(R, "attention_ref", lambda *a, **o: calls.append(1) or ref(*a, **o))
    out = torch_backend.attention_torch(q, k, v, AttentionArgs(**kw))
    assert len(calls) == 6
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(out)
    for a, e in zip(_grads(out, (q, k, v), g), _grads(want, (q, k, v), g)):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4)
