"""Triton attention vs the reference: output and grads of q, k, v and the bias (dense or T5 table)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from installed import import_or_skip
from kernel_tolerance import assert_rule, attention_low_precision, on_grid
from triton_dropout_ref import assert_binomial, keep_mask

from ptft_fast.kernels._common import draw_seed
from ptft_fast.ops import attention
from ptft_fast.ops.reference import attention_ref
from ptft_fast.ops.relative_bias import RelativePositionBias, relative_position_bucket

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _grads(fn, leaves: dict, cast, grid=None, **kw):
    """fn(**leaves cast to ``cast``, **kw); returns output and the grads of every leaf for a fixed
    random output gradient."""
    lv = {n: t.detach().to(cast).requires_grad_() for n, t in leaves.items()}
    args = dict(lv)
    rel = kw.pop("rel", None)
    if rel is not None:
        args["attn_bias"] = RelativePositionBias(args.pop("table"), **rel)
    out = fn(**args, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(grid or cast)
    grads = torch.autograd.grad(out, list(lv.values()), g.to(out.device, cast))
    return {"out": out.detach(), **{f"d{n}": t for n, t in zip(lv, grads, strict=True)}}


def check(leaves: dict, dtype=torch.float32, **kw):
    """Triton vs the fp32 reference (and PyTorch's own error in ``dtype``) for attention(**kw)."""

    def kernel(**a):
        return attention(**a, backend="triton")

    def ref(upcast):
        if upcast:
            return lambda **a: attention_ref(**a, upcast=True)
        return lambda **a: attention_low_precision(attention_ref, **a)

    leaves = on_grid(dtype, leaves)
    out = _grads(kernel, leaves, dtype, dtype, **kw)
    ref32 = _grads(ref(True), leaves, torch.float32, dtype, **kw)
    low = None
    if dtype != torch.float32:
        low = _grads(ref(False), leaves, dtype, dtype, **kw)
    scales = {"dattn_bias": _bias_grad_scale(ref(True), leaves, dtype, **kw)} if "attn_bias" in leaves else {}
    for name in out:
        lo = None if low is None else low[name].float()
        label = f"{name} {kw.get('causal')}"
        assert_rule(label, out[name].float(), ref32[name], lo, atol=2e-5, scale=scales.get(name))


def _bias_grad_scale(ref32, leaves: dict, dtype, **kw) -> float:
    """max over the bias's elements of Σ|dS| over the dims it is broadcast along. A bias gradient is
    that sum of dS, so its rounding error grows with Σ|dS|, not with its value — which is exactly 0
    for a bias constant along the keys (each row of softmax's gradient sums to 0): a bound relative
    to the gradient itself would ask for more than fp32 can give."""
    bias = leaves["attn_bias"]
    q, k = leaves["q"], leaves["k"]
    if q.dim() == 3:  # varlen: the bias spans the padded (B, Hq, max_q, max_k) grid
        full = (kw["cu_seqlens_q"].numel() - 1, q.shape[1], kw["max_seqlen_q"], kw["max_seqlen_k"])
    else:
        full = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    ds = _grads(ref32, {**leaves, "attn_bias": bias.expand(full).contiguous()}, torch.float32, dtype, **kw)
    return ds["dattn_bias"].abs().sum_to_size(bias.shape).max().item()


def qkv(b, tq, tk, hq, hkv, d, device=DEV):
    return {
        "q": torch.randn(b, tq, hq, d, device=device),
        "k": torch.randn(b, tk, hkv, d, device=device),
        "v": torch.randn(b, tk, hkv, d, device=device),
    }


# (B, Tq, Tk, Hq, Hkv, D): 1, primes, 2^k - 1, GQA/MQA, head dims 32/64/80/96/128 and odd ones
SHAPES = [
    (1, 1, 1, 1, 1, 32),
    (2, 33, 17, 4, 2, 24),
    (1, 7, 31, 3, 1, 40),
    (2, 16, 16, 2, 2, 64),
    (1, 13, 13, 1, 1, 80),
    (1, 3, 9, 2, 2, 96),
    (1, 15, 15, 2, 1, 128),
    (1, 31, 31, 1, 1, 5),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_padded(shape, causal):
    check(qkv(*shape), causal=causal)


# Under the interpreter the kernels use 32-row query and 16-wide key blocks (forward, dQ) and
# 32-wide key / 16-row query blocks (dK/dV): these lengths put fully visible blocks, diagonal
# blocks and partial tail blocks next to each other, with the diagonal shifted both ways (Tk > Tq,
# Tk < Tq: queries without keys) and block-aligned lengths; (64, 78) puts the first row that sees a
# whole key block one row into a full query block (an off-by-one there unmasks a key).
@pytest.mark.parametrize(
    "tq, tk", [(45, 45), (33, 70), (64, 78), (70, 33), (64, 64), (1, 50), (50, 1), (47, 17)]
)
@pytest.mark.parametrize("deterministic_bwd", [False, True])
def test_causal_split_boundaries(tq, tk, deterministic_bwd):
    torch.use_deterministic_algorithms(deterministic_bwd)
    try:
        check(qkv(1, tq, tk, 2, 1, 16), causal=True)
        kpm = torch.rand(2, tk, device=DEV) > 0.25  # padding mask still applies in unmasked blocks
        leaves = {**qkv(2, tq, tk, 2, 2, 24), "attn_bias": torch.randn(2, 1, tq, tk, device=DEV)}
        check(leaves, causal=True, key_padding_mask=kpm)
        check(leaves, causal=False, key_padding_mask=kpm)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask(causal):
    leaves = qkv(3, 11, 13, 2, 1, 32)
    kpm = torch.rand(3, 13, device=DEV) > 0.3
    kpm[1] = False  # a sequence with no visible key: zeros out, zero grads
    kpm[2, :1] = False
    check(leaves, causal=causal, key_padding_mask=kpm)


@pytest.mark.parametrize("bias_shape", [(2, 3, 9, 14), (9, 14), (2, 1, 9, 14), (1, 3, 1, 14), (3, 9, 1)])
def test_dense_bias_grad(bias_shape):
    leaves = {**qkv(2, 9, 14, 3, 3, 32), "attn_bias": torch.randn(bias_shape, device=DEV)}
    check(leaves, causal=True)
    check(leaves, causal=False)


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEV)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen(causal):
    len_q, len_k = [5, 1, 12, 0, 3], [7, 3, 12, 2, 0]  # empty sequences and a query without keys
    leaves = {
        "q": torch.randn(sum(len_q), 4, 24, device=DEV),
        "k": torch.randn(sum(len_k), 2, 24, device=DEV),
        "v": torch.randn(sum(len_k), 2, 24, device=DEV),
        "attn_bias": torch.randn(5, 4, 12, 12, device=DEV),
    }
    kw = dict(cu_seqlens_q=_cu(len_q), cu_seqlens_k=_cu(len_k), max_seqlen_q=12, max_seqlen_k=12)
    check(leaves, causal=causal, **kw)


# Prefix LM (causal + a prefix length per sequence) at the interpreter's tiles: prefixes of 0, inside a
# key block, on a block edge (16; 32 and one either side of it, where the dK/dV pass's 32-key blocks
# turn fully visible or start being seen by every query row), beyond the causal diagonal of the first
# query blocks and past the keys, next to each other in one batch; Tk > Tq and Tk < Tq shift the
# diagonal both ways. The fused (atomic) and the two-pass (deterministic, and with a bias) dQ passes.
@pytest.mark.parametrize("tq, tk", [(45, 45), (33, 70), (70, 33)])
@pytest.mark.parametrize("deterministic_bwd", [False, True])
def test_prefix_lm(tq, tk, deterministic_bwd):
    prefix = torch.tensor([0, 7, 16, 31, 32, 33, 100], device=DEV)
    torch.use_deterministic_algorithms(deterministic_bwd)
    try:
        check(qkv(7, tq, tk, 2, 1, 16), causal=True, prefix_lengths=prefix)
        kpm = torch.rand(7, tk, device=DEV) > 0.25
        leaves = {**qkv(7, tq, tk, 2, 2, 24), "attn_bias": torch.randn(1, 2, tq, tk, device=DEV)}
        check(leaves, causal=True, key_padding_mask=kpm, prefix_lengths=prefix.int())
    finally:
        torch.use_deterministic_algorithms(False)


def test_prefix_lm_varlen():
    """Packed documents, each with its own prefix (one-token documents, a prefix as long as its
    document, none)."""
    lens = [5, 1, 40, 17, 33]
    leaves = {
        "q": torch.randn(sum(lens), 4, 16, device=DEV),
        "k": torch.randn(sum(lens), 2, 16, device=DEV),
        "v": torch.randn(sum(lens), 2, 16, device=DEV),
    }
    kw = dict(cu_seqlens_q=_cu(lens), cu_seqlens_k=_cu(lens), max_seqlen_q=40, max_seqlen_k=40)
    check(leaves, causal=True, prefix_lengths=torch.tensor([2, 1, 19, 17, 0], device=DEV), **kw)


def test_varlen_t5_bias():
    len_q = [4, 9, 1]
    leaves = {
        "q": torch.randn(sum(len_q), 2, 32, device=DEV),
        "k": torch.randn(sum(len_q), 2, 32, device=DEV),
        "v": torch.randn(sum(len_q), 2, 32, device=DEV),
        "table": torch.randn(6, 2, device=DEV),
    }
    kw = dict(cu_seqlens_q=_cu(len_q), cu_seqlens_k=_cu(len_q), max_seqlen_q=9, max_seqlen_k=9)
    check(leaves, causal=False, rel=dict(bidirectional=True, num_buckets=6, max_distance=8), **kw)


def test_head_dim_limit():
    q = torch.randn(1, 2, 1, 257, device=DEV)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, q, q, backend="triton")


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_relative_bias_in_kernel(bidirectional):
    leaves = {**qkv(2, 29, 33, 3, 3, 32), "table": 0.5 * torch.randn(8, 3, device=DEV)}
    rel = dict(bidirectional=bidirectional, num_buckets=8, max_distance=20)
    check(leaves, causal=not bidirectional, rel=rel)


def test_t5_bucket_matches_hugging_face():
    t5 = import_or_skip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-300, 300)[None, :] - torch.arange(0, 40)[:, None]
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 20), (16, 64)):
            ours = relative_position_bucket(rel, bidirectional, nb, md)
            hf = t5.T5Attention._relative_position_bucket(rel, bidirectional, nb, md)
            assert torch.equal(ours, hf)


def _dropout_composition(q, k, v, keep, p, causal, attn_bias=None):
    """softmax(S) ∘ keep / (1 - p) @ v in fp32, the same mask as the kernel."""
    hq, hkv = q.shape[2], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kt, vt = kt.repeat_interleave(hq // hkv, 1), vt.repeat_interleave(hq // hkv, 1)
    s = qt @ kt.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if attn_bias is not None:
        s = s + attn_bias
    if causal:
        tq, tk = s.shape[-2:]
        tri = torch.ones(tq, tk, dtype=torch.bool, device=s.device).tril(tk - tq)
        s = s.masked_fill(~tri, float("-inf"))
    pr = torch.softmax(s, -1) * keep / (1 - p)
    return (pr @ vt).transpose(1, 2)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_matches_independent_mask(causal):
    """Output and every grad equal softmax(S) ∘ keep / (1 - p) @ v for the mask regenerated from the
    seed by an independent Philox (not read back from a kernel); the mask's kept count is binomial."""
    b, tq, tk, hq, hkv, d, p = 2, 17, 19, 4, 2, 32, 0.3
    leaves = {**qkv(b, tq, tk, hq, hkv, d), "attn_bias": torch.randn(1, hq, tq, tk, device=DEV)}
    torch.manual_seed(5)
    # rows (b, h, i) of the padded (B, Hq, Tq) grid, Tk columns
    keep = keep_mask(draw_seed(), b * hq * tq, tk, p).view(b, hq, tq, tk).to(DEV)
    assert_binomial(keep, p)
    torch.manual_seed(5)  # the op draws the same seed
    out = _grads(
        lambda **a: attention(**a, dropout_p=p, causal=causal, backend="triton"), leaves, torch.float32
    )
    ref = _grads(lambda **a: _dropout_composition(**a, keep=keep, p=p, causal=causal), leaves, torch.float32)
    for name in out:
        assert_rule(name, out[name], ref[name], None, atol=2e-5)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_backward_deterministic(deterministic):
    leaves = {n: t.requires_grad_() for n, t in qkv(2, 33, 33, 4, 1, 40).items()}
    grads = []
    for _ in range(2):
        out = attention(**leaves, causal=True, backend="triton")
        grads.append(torch.autograd.grad(out.sum(), list(leaves.values())))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("causal", [False, True])
def test_deterministic_two_pass_backward(deterministic, causal):
    # the atomic-free path: separate dQ kernel that also produces the dense and T5 bias grads
    check({**qkv(2, 19, 33, 4, 2, 24), "attn_bias": torch.randn(2, 1, 19, 33, device=DEV)}, causal=causal)
    check({**qkv(1, 17, 17, 2, 2, 32), "table": torch.randn(8, 2, device=DEV)}, causal=causal,
          rel=dict(bidirectional=not causal, num_buckets=8, max_distance=16))  # fmt: skip
    len_q, len_k = [5, 1, 12], [7, 3, 12]
    leaves = {
        "q": torch.randn(sum(len_q), 2, 16, device=DEV),
        "k": torch.randn(sum(len_k), 1, 16, device=DEV),
        "v": torch.randn(sum(len_k), 1, 16, device=DEV),
    }
    kw = dict(cu_seqlens_q=_cu(len_q), cu_seqlens_k=_cu(len_k), max_seqlen_q=12, max_seqlen_k=12)
    check(leaves, causal=causal, key_padding_mask=None, **kw)


def test_fp16():
    leaves = {**qkv(2, 19, 23, 2, 1, 64), "attn_bias": torch.randn(2, 1, 19, 23, device=DEV)}
    check(leaves, torch.float16, causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_real_shapes(dtype, d, causal):
    check(qkv(2, 1023, 1025, 8, 2, d), dtype, causal=causal)
    leaves = {**qkv(2, 512, 512, 4, 4, d), "table": torch.randn(32, 4, device=DEV)}
    check(leaves, dtype, causal=causal, rel=dict(bidirectional=not causal, num_buckets=32, max_distance=128))


def test_non_contiguous_inputs():
    from kernel_tolerance import compare_with_grads

    def bhtd(b, h, t, d):  # (B, T, H, D) views of (B, H, T, D) storage
        return torch.randn(b, h, t, d, device=DEV).transpose(1, 2).requires_grad_()

    inputs = {
        "q": bhtd(2, 4, 11, 32),
        "k": bhtd(2, 2, 13, 32),
        "v": bhtd(2, 2, 13, 32),
        "attn_bias": torch.randn(2, 4, 13, 11, device=DEV).transpose(2, 3).requires_grad_(),
        "key_padding_mask": (torch.rand(13, 2, device=DEV) > 0.2).t(),
        "causal": True,
    }
    compare_with_grads("attn", lambda **a: attention(**a, backend="triton"), attention_ref, inputs, atol=2e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(1, 2),
    tq=st.integers(1, 21),
    tk=st.integers(1, 21),
    hkv=st.integers(1, 2),
    group=st.integers(1, 3),
    d=st.sampled_from([8, 16, 24, 33, 64]),
    causal=st.booleans(),
    masked=st.booleans(),
)
def test_fuzz_shapes(b, tq, tk, hkv, group, d, causal, masked):
    kw = {"causal": causal}
    if masked:
        kw["key_padding_mask"] = torch.rand(b, tk, device=DEV) > 0.3
    check(qkv(b, tq, tk, hkv * group, hkv, d), **kw)


def test_relative_bias_bad_table_is_rejected():
    q = torch.randn(1, 5, 2, 16, device=DEV)
    bad = RelativePositionBias(torch.randn(8, 3, device=DEV), num_buckets=8, max_distance=16)  # Hq is 2
    with pytest.raises(ValueError, match=r"attn_bias.table"):
        attention(q, q, q, attn_bias=bad, backend="triton")
    with pytest.raises(ValueError, match="num_buckets"):
        attention(q, q, q, attn_bias=RelativePositionBias(torch.randn(8, 2, device=DEV), num_buckets=1))
