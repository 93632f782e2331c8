"""torch.autograd.gradcheck in float64 for every reference op, with and without each option."""

import pytest
import torch

from ptft_fast.ops import reference as R

f64 = dict(dtype=torch.float64, requires_grad=True)


def _seeded(fn):
    """Re-seed before every call so dropout draws the same mask on each gradcheck evaluation."""

    def wrapped(*args):
        torch.manual_seed(1234)
        return fn(*args)

    return wrapped


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_layer_norm_gradcheck(rms, with_residual, dropout_p):
    x = torch.randn(3, 5, 7, **f64)
    res = torch.randn(3, 5, 7, **f64) if with_residual else None
    w, b = torch.randn(7, **f64), torch.randn(7, **f64)

    def fn(x, w, b, *maybe_res):
        y, h = R.layer_norm_ref(
            x, w, b, 1e-5, residual=maybe_res[0] if maybe_res else None, rms=rms, dropout_p=dropout_p,
            return_residual=True,
        )  # fmt: skip
        return y, h

    inputs = (x, w, b) + ((res,) if with_residual else ())
    assert torch.autograd.gradcheck(_seeded(fn), inputs, fast_mode=True)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"causal": True},
        {"causal": True, "tk": 7},  # Tq != Tk: bottom-right causal alignment
        {"mask": True},
        {"bias": True},
        {"bias": True, "causal": True, "mask": True},
        {"gqa": True, "causal": True},
        {"scale": 0.3},
        {"dropout": 0.2},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain",
)
def test_attention_gradcheck(opts):
    b, tq, tk, hq, d = 2, 5, opts.get("tk", 5), 4, 3
    hkv = 2 if opts.get("gqa") else hq
    q = torch.randn(b, tq, hq, d, **f64)
    k, v = torch.randn(b, tk, hkv, d, **f64), torch.randn(b, tk, hkv, d, **f64)
    mask = None
    if opts.get("mask"):
        mask = torch.ones(b, tk, dtype=torch.bool)
        mask[0, -2:] = False
    bias = torch.randn(1, hq, tq, tk, **f64) if opts.get("bias") else None

    def fn(q, k, v, *maybe_bias):
        return R.attention_ref(
            q, k, v, causal=opts.get("causal", False), key_padding_mask=mask,
            attn_bias=maybe_bias[0] if maybe_bias else None, dropout_p=opts.get("dropout", 0.0),
            softmax_scale=opts.get("scale"),
        )  # fmt: skip

    inputs = (q, k, v) + ((bias,) if bias is not None else ())
    assert torch.autograd.gradcheck(_seeded(fn), inputs, fast_mode=True)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_varlen_gradcheck(causal):
    lens_q, lens_k = [3, 1, 4], [3, 2, 4]
    cu_q = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    q = torch.randn(sum(lens_q), 2, 3, **f64)
    k, v = torch.randn(sum(lens_k), 2, 3, **f64), torch.randn(sum(lens_k), 2, 3, **f64)

    def fn(q, k, v):
        return R.attention_ref(
            q, k, v, causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=4, max_seqlen_k=4
        )

    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("varlen", [False, True])
def test_attention_prefix_lm_gradcheck(varlen):
    q = torch.randn(2, 6, 2, 3, **f64)
    k, v = torch.randn(2, 6, 2, 3, **f64), torch.randn(2, 6, 2, 3, **f64)
    prefix = torch.tensor([2, 5])
    kw = dict(causal=True, prefix_lengths=prefix)
    if varlen:  # two packed sequences of 6
        q, k, v = (t.reshape(12, 2, 3) for t in (q, k, v))
        cu = torch.tensor([0, 6, 12], dtype=torch.int32)
        kw.update(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=6, max_seqlen_k=6)

    def fn(q, k, v):
        return R.attention_ref(q, k, v, **kw)

    inputs = tuple(t.detach().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing,z_loss", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)])
@pytest.mark.parametrize("vocab_chunk", [1 << 16, 8])  # one vocab block, and the online-LSE path
def test_linear_cross_entropy_gradcheck(reduction, smoothing, z_loss, vocab_chunk, monkeypatch):
    monkeypatch.setattr(R, "LINEAR_CROSS_ENTROPY_VOCAB_CHUNK", vocab_chunk)
    n, h, v = 11, 6, 19
    hidden, weight, bias = torch.randn(n, h, **f64), torch.randn(v, h, **f64), torch.randn(v, **f64)
    labels = torch.randint(0, v, (n,))
    labels[::4] = -100

    def fn(hidden, weight, bias):
        return R.linear_cross_entropy_ref(
            hidden, weight, labels, bias, label_smoothing=smoothing, z_loss=z_loss, reduction=reduction
        )

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias), fast_mode=True)


def test_linear_cross_entropy_gradcheck_no_bias_3d():
    hidden, weight = torch.randn(2, 5, 4, **f64), torch.randn(9, 4, **f64)
    labels = torch.randint(0, 9, (2, 5))
    labels[1, :3] = -100
    assert torch.autograd.gradcheck(lambda h, w: R.linear_cross_entropy_ref(h, w, labels), (hidden, weight))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_lora_linear_gradcheck(with_bias, dropout_p):
    x = torch.randn(2, 3, 5, **f64)
    w, a, b = torch.randn(4, 5, **f64), torch.randn(2, 5, **f64), torch.randn(4, 2, **f64)
    bias = torch.randn(4, **f64) if with_bias else None

    def fn(x, w, a, b, *maybe_bias):
        return R.lora_linear_ref(x, w, maybe_bias[0] if maybe_bias else None, a, b, 0.7, dropout_p=dropout_p)

    inputs = (x, w, a, b) + ((bias,) if with_bias else ())
    assert torch.autograd.gradcheck(_seeded(fn), inputs, fast_mode=True)
