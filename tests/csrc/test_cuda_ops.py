"""CUDA C++ kernels (backend="cuda") vs the fp32 references: forward and every gradient, the
kernel tolerance rule (docs/ARCHITECTURE.md), shapes with 1, primes and 2^k - 1, dropout through recovered masks,
torch.library.opcheck on every op, torch.compile tracing, no host sync in the cross-entropy.

Every input, and every output-gradient projection, lies on the low-precision grid of the dtype
under test (``kernel_tolerance.on_grid``), so the fp32 oracle sees exactly what the kernel and
PyTorch see: the errors compared are those of the computation, not of rounding the inputs (which
would dominate small outputs and make the rule a coin flip even for a correctly rounded kernel).

GPU only: skipped without CUDA (conftest) or without a built ptft_fast._C; on a GPU machine the
latter also fails test_csrc_build.py::test_cuda_backend_is_built_where_a_gpu_is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import philox_ref
from kernel_tolerance import assert_rule, attention_low_precision, linear_cross_entropy_inputs, on_grid

from ptft_fast.ops import attention, layer_norm, linear_cross_entropy, lora_linear
from ptft_fast.ops.dispatch import backend_available
from ptft_fast.ops.reference import (
    attention_ref,
    layer_norm_ref,
    linear_cross_entropy_ref,
    lora_linear_ref,
)
from ptft_fast.ops.relative_bias import RelativePositionBias

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not backend_available("cuda")[0], reason="cuda backend unavailable (ptft_fast._C not built)"
    ),
]
DEV = "cuda"
HALF = [torch.bfloat16, torch.float16]


def _leaves(tensors, dtype):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


def _grads(out, leaves, names, grid, seed=1):
    """Backward of a fixed random projection of ``out`` (values on ``grid``'s dtype); returns
    {name: grad}."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    proj = torch.randn(out.shape, generator=g).to(grid).to(out.device, out.dtype)
    (out * proj).sum().backward()
    return {n: t.grad for n, t in zip(names, leaves, strict=True) if t is not None and t.grad is not None}


def _compare(tag, ours, ref32, low):
    assert set(ours) == set(ref32), f"{tag}: outputs {sorted(ours)} vs {sorted(ref32)}"
    for name in ours:
        lo = None if low is None else low[name].float()
        assert_rule(f"{tag} {name}", ours[name].float(), ref32[name].float(), lo)


# ----------------------------------------------------------------------------------- layer norm


def _ln_run(fn, x, w, b, r, dtype, grid, x_scale=None, **kw):
    lx, lw, lb, lr = _leaves((x, w, b, r), dtype)
    xin = lx if x_scale is None else lx * x_scale.to(dtype)
    y, h = fn(xin, lw, lb, residual=lr, return_residual=True, **kw)
    g = torch.Generator(device="cpu").manual_seed(1)
    gy, gh = (torch.randn(t.shape, generator=g).to(grid).to(DEV, t.dtype) for t in (y, h))
    ((y * gy).sum() + (h * gh).sum()).backward()
    out = {"y": y.detach(), "h": h.detach()}
    out.update(
        {
            n: t.grad
            for n, t in zip(("dx", "dw", "db", "dres"), (lx, lw, lb, lr), strict=True)
            if t is not None
        }
    )
    return out


def _ln_check(shape, dtype, *, rms=False, affine=True, with_bias=True, with_res=True, dropout_p=0.0):
    hidden = shape[-1]
    x = torch.randn(shape, device=DEV)
    w = 1.0 + 0.5 * torch.randn(hidden, device=DEV) if affine else None
    b = 0.3 * torch.randn(hidden, device=DEV) if with_bias else None
    r = torch.randn(shape, device=DEV) if with_res else None
    x, w, b, r = on_grid(dtype, (x, w, b, r))
    mask = None
    if dropout_p > 0.0:  # the kernel's mask for this seed: dropout of ones, read back from h
        torch.manual_seed(7)
        _, mask = layer_norm(
            torch.ones(shape, device=DEV, dtype=dtype),
            None,
            return_residual=True,
            dropout_p=dropout_p,
            backend="cuda",
        )
        mask = mask.float()
        kept = (mask > 0).float().mean().item()
        assert abs(kept - (1 - dropout_p)) < 0.1 + 3.0 / mask.numel() ** 0.5
        torch.manual_seed(7)
    kw = dict(rms=rms, eps=1e-5)
    ours = _ln_run(
        lambda *a, **k: layer_norm(*a, dropout_p=dropout_p, backend="cuda", **k),
        x,
        w,
        b,
        r,
        dtype,
        dtype,
        **kw,
    )
    ref32 = _ln_run(
        lambda *a, **k: layer_norm_ref(*a, upcast=True, **k), x, w, b, r, torch.float32, dtype, mask, **kw
    )
    low = None
    if dtype != torch.float32:
        low = _ln_run(
            lambda *a, **k: layer_norm_ref(*a, upcast=False, **k), x, w, b, r, dtype, dtype, mask, **kw
        )
    _compare(f"layer_norm {shape} {dtype} rms={rms} p={dropout_p}", ours, ref32, low)


LN_SHAPES = [(1, 1), (3, 7), (5, 31), (2, 3, 64), (17, 127), (4, 1000), (2, 4099)]


@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("rms", [False, True])
def test_layer_norm(shape, dtype, rms):
    _ln_check(shape, dtype, rms=rms)


@pytest.mark.parametrize("rms", [False, True])
def test_layer_norm_options(rms):
    _ln_check((6, 40), torch.bfloat16, rms=rms, affine=False, with_bias=False, with_res=False)
    _ln_check((6, 40), torch.float16, rms=rms, with_bias=False)
    _ln_check((9, 33), torch.float32, rms=rms, dropout_p=0.3)
    _ln_check((9, 257), torch.bfloat16, rms=rms, dropout_p=0.5, with_res=False)


def test_layer_norm_fp32_weight_with_bf16_x():
    x = torch.randn(5, 96, device=DEV, dtype=torch.bfloat16)
    w, b = torch.randn(96, device=DEV), torch.randn(96, device=DEV)
    ours = layer_norm(x, w, b, backend="cuda")
    ref = layer_norm_ref(x, w, b, upcast=True)
    low = layer_norm_ref(x, w.bfloat16(), b.bfloat16(), upcast=False)
    assert_rule("layer_norm fp32 weight", ours.float(), ref.float(), low.float())


# ------------------------------------------------------------------------------------ attention


def _attn_run(fn, q, k, v, bias, dtype, grid, **kw):
    leaves = _leaves((q, k, v, bias), dtype)
    out = fn(*leaves[:3], attn_bias=leaves[3], **kw)
    res = {"out": out.detach()}
    res.update(_grads(out, leaves, ("dq", "dk", "dv", "dbias"), grid))
    return res


def _attn_check(b, tq, tk, hq, hkv, d, dtype, *, bias_shape=None, padding=False, **kw):
    q = torch.randn(b, tq, hq, d, device=DEV)
    k = torch.randn(b, tk, hkv, d, device=DEV)
    v = torch.randn(b, tk, hkv, d, device=DEV)
    bias = None if bias_shape is None else torch.randn(bias_shape, device=DEV)
    if padding:
        lengths = torch.randint(1, tk + 1, (b,), device=DEV)
        kw["key_padding_mask"] = torch.arange(tk, device=DEV)[None, :] < lengths[:, None]
    q, k, v, bias = on_grid(dtype, (q, k, v, bias))
    ours = _attn_run(lambda *a, **k_: attention(*a, backend="cuda", **k_), q, k, v, bias, dtype, dtype, **kw)
    ref32 = _attn_run(
        lambda *a, **k_: attention_ref(*a, upcast=True, **k_), q, k, v, bias, torch.float32, dtype, **kw
    )
    low = _attn_run(
        lambda *a, **k_: attention_low_precision(attention_ref, *a, **k_), q, k, v, bias, dtype, dtype, **kw
    )
    _compare(f"attention {(b, tq, tk, hq, hkv, d)} {dtype} {kw.keys()}", ours, ref32, low)


ATTN_SHAPES = [  # (B, Tq, Tk, Hq, Hkv): T off the 64/128 tiles, GQA and MQA
    (1, 1, 1, 1, 1),
    (2, 7, 7, 2, 2),
    (1, 31, 63, 4, 2),
    (3, 64, 64, 2, 1),
    (1, 127, 97, 3, 3),
    (2, 257, 129, 4, 4),
    (2, 200, 131, 4, 1),
    (1, 129, 300, 6, 2),
]
HEAD_DIMS = [32, 64, 128]


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
def test_attention(shape, d, causal):
    for dtype in HALF:
        _attn_check(*shape, d, dtype, causal=causal)


@pytest.mark.parametrize("bias_shape", [(2, 4, 33, 47), (4, 33, 47), (1, 1, 33, 47), (47,), (2, 1, 1, 47)])
def test_attention_bias_grad_and_padding(bias_shape):
    _attn_check(2, 33, 47, 4, 2, 64, torch.bfloat16, bias_shape=bias_shape, padding=True, causal=True)
    _attn_check(2, 33, 47, 4, 4, 128, torch.float16, bias_shape=bias_shape, padding=True)
    _attn_check(2, 33, 47, 4, 1, 32, torch.bfloat16, bias_shape=bias_shape, padding=True, causal=True)


def test_attention_softmax_scale():
    _attn_check(2, 19, 23, 2, 1, 64, torch.bfloat16, softmax_scale=0.3)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_attention_varlen(causal, d):
    lq, lk = [1, 7, 64, 31, 1, 130], [3, 7, 127, 16, 1, 140]  # one-token sequences, > one block
    cu_q = torch.tensor([0, *torch.tensor(lq).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lk).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    q = torch.randn(sum(lq), 4, d, device=DEV)
    k = torch.randn(sum(lk), 2, d, device=DEV)
    v = torch.randn(sum(lk), 2, d, device=DEV)
    bias = torch.randn(1, 4, max(lq), max(lk), device=DEV)
    kw = dict(causal=causal, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lq), max_seqlen_k=max(lk))
    for dtype in HALF:
        qg, kg, vg, bg = on_grid(dtype, (q, k, v, bias))
        ours = _attn_run(
            lambda *a, **k_: attention(*a, backend="cuda", **k_), qg, kg, vg, bg, dtype, dtype, **kw
        )
        ref32 = _attn_run(
            lambda *a, **k_: attention_ref(*a, upcast=True, **k_), qg, kg, vg, bg, torch.float32, dtype, **kw
        )
        low = _attn_run(
            lambda *a, **k_: attention_low_precision(attention_ref, *a, **k_),
            qg,
            kg,
            vg,
            bg,
            dtype,
            dtype,
            **kw,
        )
        _compare(f"attention varlen d={d} causal={causal} {dtype}", ours, ref32, low)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_attention_prefix_lm(d):
    """Prefix LM (causal + per-sequence prefix lengths): prefixes ending inside a 64-key tile, on a
    tile edge, past the diagonal of the first query tiles and past the keys; padded (with GQA,
    Tq != Tk and a padding mask) and varlen."""
    lengths = torch.tensor([0, 37, 64, 150, 1000], device=DEV)
    for dtype in HALF:
        _attn_check(5, 200, 200, 4, 2, d, dtype, causal=True, prefix_lengths=lengths)
        _attn_check(5, 77, 200, 2, 1, d, dtype, causal=True, prefix_lengths=lengths, padding=True)
    lq = [1, 7, 64, 131, 140]
    cu = torch.tensor([0, *torch.tensor(lq).cumsum(0).tolist()], device=DEV, dtype=torch.int32)
    q = torch.randn(sum(lq), 4, d, device=DEV)
    kw = dict(causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lq), max_seqlen_k=max(lq))
    kw["prefix_lengths"] = torch.tensor([1, 3, 64, 70, 0], device=DEV, dtype=torch.int32)
    for dtype in HALF:
        (qg,) = on_grid(dtype, (q,))
        args = (qg, qg.clone(), qg.flip(0).contiguous(), None)
        ours = _attn_run(lambda *a, **k_: attention(*a, backend="cuda", **k_), *args, dtype, dtype, **kw)
        ref32 = _attn_run(
            lambda *a, **k_: attention_ref(*a, upcast=True, **k_), *args, torch.float32, dtype, **kw
        )
        low = _attn_run(
            lambda *a, **k_: attention_low_precision(attention_ref, *a, **k_), *args, dtype, dtype, **kw
        )
        _compare(f"attention varlen prefix d={d} {dtype}", ours, ref32, low)


def test_attention_unsupported_head_dim_is_a_clear_error():
    q = torch.randn(1, 4, 2, 80, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, q, q, backend="cuda")


@pytest.mark.parametrize("causal", [False, True])
def test_attention_dropout(causal):
    """One-hot v reveals the dropped probabilities P·mask/(1-p); then fwd and grads vs a manual
    fp32 reference with that mask (same seed → same mask)."""
    b, t, h, d, p = 2, 37, 2, 64, 0.3
    q = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)
    onehot = torch.zeros(b, t, h, d, device=DEV, dtype=torch.bfloat16)
    onehot[:, torch.arange(t), :, torch.arange(t)] = 1.0
    torch.manual_seed(11)
    pd = attention(q, k, onehot, causal=causal, dropout_p=p, backend="cuda")[
        ..., :t
    ].float()  # (b, tq, h, tk)
    scale = d**-0.5
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if causal:
        s = s.masked_fill(torch.ones(t, t, device=DEV, dtype=torch.bool).triu(1), float("-inf"))
    probs = s.softmax(-1)
    mask = (pd.permute(0, 2, 1, 3) > 0).float()  # (b, h, tq, tk)
    kept = mask[probs > 1e-3].mean().item()
    assert abs(kept - (1 - p)) < 0.05
    torch.testing.assert_close(pd.permute(0, 2, 1, 3), probs * mask / (1 - p), atol=2e-2, rtol=2e-2)

    v = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)

    def manual(q_, k_, v_):
        s_ = torch.einsum("bqhd,bkhd->bhqk", q_, k_) * scale
        if causal:
            s_ = s_.masked_fill(torch.ones(t, t, device=DEV, dtype=torch.bool).triu(1), float("-inf"))
        # the mask in the run's dtype: a float32 mask would promote the bf16 run's probabilities
        return torch.einsum("bhqk,bkhd->bqhd", s_.softmax(-1) * mask.to(s_.dtype) / (1 - p), v_)

    torch.manual_seed(11)
    bf = torch.bfloat16
    ours = _attn_run(
        lambda *a, **k_: attention(*a, causal=causal, dropout_p=p, backend="cuda"), q, k, v, None, bf, bf
    )
    ref32 = _attn_run(lambda q_, k_, v_, attn_bias: manual(q_, k_, v_), q, k, v, None, torch.float32, bf)
    low = _attn_run(lambda q_, k_, v_, attn_bias: manual(q_, k_, v_), q, k, v, None, bf, bf)
    _compare("attention dropout", ours, ref32, low)


def _t5_run(fn, qkv, table, dtype, table_dtype, grid, bidirectional, causal):
    leaves = _leaves(qkv, dtype)
    tab = table.detach().to(table_dtype).requires_grad_()
    rel = RelativePositionBias(tab, bidirectional=bidirectional, num_buckets=32, max_distance=64)
    out = fn(*leaves, attn_bias=rel, causal=causal)
    res = {"out": out.detach()}
    res.update(_grads(out, [*leaves, tab], ("dq", "dk", "dv", "dtable"), grid))
    return res


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_attention_relative_bias_in_kernel(bidirectional, d):
    """T5 bias looked up in the kernels (bucket LUT + table) vs the reference's materialized bias,
    output and every gradient, the table's included; causal decoder style and encoder style."""
    b, tq, tk, hq, hkv = 2, 77, 150, 4, 2
    kw = dict(bidirectional=bidirectional, causal=not bidirectional)
    q = torch.randn(b, tq, hq, d, device=DEV)
    k = torch.randn(b, tk, hkv, d, device=DEV)
    v = torch.randn(b, tk, hkv, d, device=DEV)
    table = torch.randn(32, hq, device=DEV)
    for dtype in HALF:
        qkv = on_grid(dtype, (q, k, v))
        f32 = torch.float32
        ours = _t5_run(
            lambda *a, **k_: attention(*a, backend="cuda", **k_), qkv, table, dtype, f32, dtype, **kw
        )
        ref32 = _t5_run(
            lambda *a, **k_: attention_ref(*a, upcast=True, **k_), qkv, table, f32, f32, dtype, **kw
        )
        low = _t5_run(
            lambda *a, **k_: attention_low_precision(attention_ref, *a, **k_),
            qkv,
            table,
            dtype,
            dtype,
            dtype,
            **kw,
        )
        _compare(f"attention T5 d={d} {kw} {dtype}", ours, ref32, low)


def _rng_after_seed(seed):
    """The {seed, offset} that cuda_backend.draw_rng draws first after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    rng = torch.empty(2, dtype=torch.int64, device=DEV).random_().tolist()
    return rng[0] & (2**64 - 1), rng[1] & (2**64 - 1)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_dropout_mask_is_the_documented_philox_mask(d, causal):
    """The kept probabilities (revealed by a one-hot v) are exactly philox_ref.attention_keep of the
    launch's {seed, offset}: the mask is regenerated independently, not read back from a kernel."""
    b, t, h, p = 2, min(d, 61), 3, 0.3
    q = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(b, t, h, d, device=DEV, dtype=torch.bfloat16)
    onehot = torch.zeros(b, t, h, d, device=DEV, dtype=torch.bfloat16)
    onehot[:, torch.arange(t), :, torch.arange(t)] = 1.0
    seed, offset = _rng_after_seed(23)
    torch.manual_seed(23)
    pd = attention(q, k, onehot, causal=causal, dropout_p=p, backend="cuda")[
        ..., :t
    ].float()  # (b, tq, h, tk)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * d**-0.5
    if causal:
        s = s.masked_fill(torch.ones(t, t, device=DEV, dtype=torch.bool).triu(1), float("-inf"))
    probs = s.softmax(-1)
    keep = torch.from_numpy(philox_ref.attention_keep(seed, offset, b, h, t, t, p)).to(DEV)
    seen = probs > 1e-3  # where the bf16 output can show the probability
    assert torch.equal((pd.permute(0, 2, 1, 3) > 0)[seen], keep[seen])
    torch.testing.assert_close(pd.permute(0, 2, 1, 3), probs * keep / (1 - p), atol=2e-2, rtol=2e-2)


def test_layer_norm_dropout_mask_is_the_documented_philox_mask():
    rows, hidden, p = 5, 203, 0.4  # rows straddle the 8-element Philox groups
    seed, offset = _rng_after_seed(31)
    torch.manual_seed(31)
    _, h = layer_norm(
        torch.ones(rows, hidden, device=DEV), None, return_residual=True, dropout_p=p, backend="cuda"
    )
    keep = torch.from_numpy(philox_ref.elementwise_keep(seed, offset, rows * hidden, p)).to(DEV)
    assert torch.equal(h.reshape(-1) > 0, keep)
    torch.testing.assert_close(h.reshape(-1), keep.float() / (1 - p))


# ------------------------------------------------------------------------- linear cross-entropy


def _linear_cross_entropy_run(fn, h, w, bias, labels, dtype, grid, **kw):
    leaves = _leaves((h, w, bias), dtype)
    loss = fn(leaves[0], leaves[1], labels, leaves[2], **kw)
    res = {"loss": loss.detach()}
    res.update(_grads(loss, leaves, ("dh", "dw", "db"), grid))
    return res


def _linear_cross_entropy_check(n, hdim, vocab, dtype, *, with_bias=True, ignore_frac=0.3, **kw):
    h, w, bias, labels = linear_cross_entropy_inputs(
        n, hdim, vocab, dtype, with_bias=with_bias, ignore_frac=ignore_frac, device=DEV
    )
    ours = _linear_cross_entropy_run(
        lambda *a, **k: linear_cross_entropy(*a, backend="cuda", **k), h, w, bias, labels, dtype, dtype, **kw
    )
    ref32 = _linear_cross_entropy_run(
        lambda *a, **k: linear_cross_entropy_ref(*a, upcast=True, **k),
        h,
        w,
        bias,
        labels,
        torch.float32,
        dtype,
        **kw,
    )
    low = _linear_cross_entropy_run(
        lambda *a, **k: linear_cross_entropy_ref(*a, upcast=False, **k),
        h,
        w,
        bias,
        labels,
        dtype,
        dtype,
        **kw,
    )
    _compare(f"linear_cross_entropy {(n, hdim, vocab)} {dtype} {kw}", ours, ref32, low)


LINEAR_CROSS_ENTROPY_SHAPES = [(1, 8, 1), (7, 31, 13), (33, 64, 127), (127, 128, 2049), (300, 96, 5003)]


@pytest.mark.parametrize("shape", LINEAR_CROSS_ENTROPY_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy(shape, reduction):
    for dtype in HALF:
        _linear_cross_entropy_check(
            *shape, dtype, reduction=reduction, ignore_frac=0.0 if shape[0] == 1 else 0.3
        )


@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_cross_entropy_smoothing_and_z_loss(with_bias):
    _linear_cross_entropy_check(
        65, 64, 1000, torch.bfloat16, with_bias=with_bias, label_smoothing=0.1, z_loss=1e-3
    )
    _linear_cross_entropy_check(
        65, 64, 1000, torch.float16, with_bias=with_bias, label_smoothing=0.2, reduction="none"
    )


def test_linear_cross_entropy_all_ignored_and_no_host_sync():
    h = torch.randn(9, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(50, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.full((9,), -100, device=DEV)
    loss = linear_cross_entropy(h, w, labels, reduction="sum", backend="cuda")
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().max().item() == 0.0 and w.grad.abs().max().item() == 0.0
    labels[::2] = 3
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = linear_cross_entropy(h, w, labels, backend="cuda")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


# ----------------------------------------------------------------------------------------- LoRA


def _lora_run(fn, x, w, b, a, bb, dtype, grid, scaling, x_scale=None, train_base=False):
    lx, la, lb = _leaves((x, a, bb), dtype)
    lw = w.detach().to(dtype).requires_grad_(train_base)
    lbias = None if b is None else b.detach().to(dtype).requires_grad_(train_base)
    xin = lx if x_scale is None else lx * x_scale.to(dtype)
    y = fn(xin, lw, lbias, la, lb, scaling)
    names, leaves = ["dx", "da", "db_lora"], [lx, la, lb]
    if train_base:
        names += ["dw", "dbias"]
        leaves += [lw, lbias]
    res = {"y": y.detach()}
    res.update(_grads(y, leaves, names, grid))
    return res


def _lora_linear_check(m, fin, fout, r, dtype, *, with_bias=True, train_base=False, dropout_p=0.0):
    x = torch.randn(m, fin, device=DEV)
    w = torch.randn(fout, fin, device=DEV) / fin**0.5
    b = torch.randn(fout, device=DEV) if with_bias else None
    a = torch.randn(r, fin, device=DEV) / fin**0.5
    bb = torch.randn(fout, r, device=DEV) / r**0.5
    x, w, b, a, bb = on_grid(dtype, (x, w, b, a, bb))
    scaling = 2.0
    mask = None
    if dropout_p > 0.0:  # A = I, B = I, W = 0: y = dropout(ones) reveals the mask of this seed
        eye = torch.eye(fin, device=DEV, dtype=dtype)
        torch.manual_seed(5)
        mask = lora_linear(
            torch.ones(m, fin, device=DEV, dtype=dtype), torch.zeros_like(eye), None, eye, eye, 1.0,
            dropout_p=dropout_p, backend="cuda",
        ).float()  # fmt: skip
        torch.manual_seed(5)

    def ours_fn(*args):
        return lora_linear(*args, dropout_p=dropout_p, backend="cuda")

    def ref_fn(upcast):
        def f(xin, w_, b_, a_, bb_, s):
            # the reference applies the mask to the low-rank input only
            if mask is None:
                return lora_linear_ref(xin, w_, b_, a_, bb_, s, upcast=upcast)
            base = lora_linear_ref(xin, w_, b_, torch.zeros_like(a_), bb_, s, upcast=upcast)
            low_rank = lora_linear_ref(
                xin * mask.to(xin.dtype), torch.zeros_like(w_), None, a_, bb_, s, upcast=upcast
            )
            return base + low_rank

        return f

    ours = _lora_run(ours_fn, x, w, b, a, bb, dtype, dtype, scaling, train_base=train_base)
    ref32 = _lora_run(ref_fn(True), x, w, b, a, bb, torch.float32, dtype, scaling, train_base=train_base)
    low = _lora_run(ref_fn(False), x, w, b, a, bb, dtype, dtype, scaling, train_base=train_base)
    _compare(f"lora {(m, fin, fout, r)} {dtype} p={dropout_p}", ours, ref32, low)


LORA_SHAPES = [(1, 8, 8, 1), (7, 31, 13, 3), (33, 64, 127, 8), (127, 256, 96, 16), (255, 128, 257, 64)]


@pytest.mark.parametrize("shape", LORA_SHAPES)
def test_lora_linear(shape):
    for dtype in HALF:
        _lora_linear_check(*shape, dtype)


def test_lora_linear_trainable_base_and_dropout():
    _lora_linear_check(33, 64, 48, 8, torch.bfloat16, train_base=True)
    _lora_linear_check(17, 64, 64, 8, torch.bfloat16, with_bias=False, train_base=True)
    _lora_linear_check(29, 64, 40, 4, torch.float16, dropout_p=0.25)


# --------------------------------------------------------------------- opcheck and torch.compile


def _opcheck_cases():
    bf = dict(device=DEV, dtype=torch.bfloat16)
    x = torch.randn(6, 64, **bf, requires_grad=True)
    w = torch.randn(64, device=DEV, requires_grad=True)
    rng = torch.tensor([123, 456], device=DEV)
    q = torch.randn(2, 9, 4, 64, **bf, requires_grad=True)
    k = torch.randn(2, 11, 2, 64, **bf, requires_grad=True)
    bias = torch.randn(4, 9, 11, **bf, requires_grad=True)
    rel = RelativePositionBias(torch.randn(32, 4, device=DEV, requires_grad=True))
    lut, table = rel.bucket_lut(9, 11), rel.table
    prefix = torch.tensor([4, 11], device=DEV, dtype=torch.int32)
    h = torch.randn(7, 64, **bf, requires_grad=True)
    wv = torch.randn(50, 64, **bf, requires_grad=True)
    labels = torch.tensor([1, -100, 3, 4, -100, 49, 0], device=DEV)
    la = torch.randn(4, 64, **bf, requires_grad=True)
    lb = torch.randn(32, 4, **bf, requires_grad=True)
    wl = torch.randn(32, 64, **bf)
    ops = torch.ops.ptft_fast

    def attn(bias=None, lut=None, table=None, prefix=None, rng=None, causal=True, p=0.0):
        """attention_fwd's arguments: q (2, 9, 4, 64), k = v (2, 11, 2, 64), softmax scale 1/8."""
        v = k.detach().clone()
        return (q, k, v, None, None, None, bias, lut, table, prefix, rng, 9, 11, causal, p, 0.125)

    return [
        (
            ops.layer_norm_fwd.default,
            (x, w, w.detach().clone(), x.detach().clone(), rng, 1e-5, False, 0.1, True),
        ),
        (ops.layer_norm_fwd.default, (x, None, None, None, None, 1e-5, True, 0.0, False)),
        (ops.attention_fwd.default, attn(bias=bias, rng=rng, p=0.1)),
        (ops.attention_fwd.default, attn(lut=lut, table=table, causal=False)),
        (ops.attention_fwd.default, attn(prefix=prefix)),
        (ops.linear_cross_entropy_fwd.default, (h, wv, labels, None, -100, 0.1, 1e-4, "mean")),
        (ops.linear_cross_entropy_fwd.default, (h, wv, labels, None, -100, 0.0, 0.0, "none")),
        (ops.lora_linear_fwd.default, (x, wl, None, la, lb, rng, 2.0, 0.1)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_torch_compile_traces_the_ops():
    """The ops are opaque custom ops: the compiled graph runs the same kernels, so outputs and
    gradients equal eager's bit for bit (q alone depends on x, so no accumulation order differs)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(4, 16, 64, generator=g).to(DEV, torch.bfloat16).requires_grad_()
    w = torch.randn(64, generator=g).to(DEV, torch.bfloat16).requires_grad_()
    k, v = (torch.randn(4, 16, 1, 64, generator=g).to(DEV, torch.bfloat16) for _ in range(2))

    def f(x_, w_):
        q = layer_norm(x_, w_, backend="cuda").view(4, 16, 1, 64)
        return attention(q, k, v, causal=True, backend="cuda")

    def run(fn):
        x.grad = w.grad = None
        out = fn(x, w)
        out.float().sum().backward()
        return out.detach(), x.grad.clone(), w.grad.clone()

    eager = run(f)
    compiled = run(torch.compile(f, fullgraph=True))
    for name, a, b in zip(("out", "dx", "dw"), compiled, eager, strict=True):
        assert torch.equal(a, b), (
            f"{name}: compiled differs from eager by {(a.float() - b.float()).abs().max()}"
        )
