"""CPU tests of the cuda backend: availability errors, argument adaptation, and the Python-side
torch.library wiring (fake implementations + autograd) on meta tensors. The kernels themselves
are compile-checked by .ci/check_csrc.sh and tested on GPU in test_cuda_ops.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ptft_fast.ops import attention, layer_norm, linear_cross_entropy, lora_linear
from ptft_fast.ops import cuda_backend as cb
from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.dispatch import BackendUnavailableError, backend_available
from ptft_fast.ops.relative_bias import RelativePositionBias

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA_BACKEND = not backend_available("cuda")[0]


@pytest.mark.gpu
def test_cuda_backend_is_built_where_a_gpu_is():
    """On a machine with a GPU, a missing ptft_fast._C is a failure, not a quiet skip of every CUDA
    kernel test (test_cuda_ops.py skips, naming the same reason, so that this one test says why)."""
    available, why = backend_available("cuda")
    assert available, f"a CUDA GPU is present but the cuda backend is not: {why}"


@pytest.mark.skipif(not NO_CUDA_BACKEND, reason="the cuda backend is available here")
def test_cuda_backend_unavailable_is_a_clear_error():
    x = torch.randn(2, 8)
    with pytest.raises(BackendUnavailableError, match=r"cuda.*(ptft_fast._C|CUDA)"):
        layer_norm(x, None, backend="cuda")
    q = torch.randn(1, 4, 2, 64)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        attention(q, q, q, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        linear_cross_entropy(torch.randn(3, 8), torch.randn(5, 8), torch.tensor([0, 1, 2]), backend="cuda")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        lora_linear(
            torch.randn(3, 8),
            torch.randn(4, 8),
            None,
            torch.randn(2, 8),
            torch.randn(4, 2),
            1.0,
            backend="cuda",
        )


@pytest.mark.skipif(cb._C is not None, reason="ptft_fast._C is built here")
def test_no_registration_without_extension():
    from ptft_fast.ops.dispatch import registered

    assert all("cuda" not in backends for backends in registered().values())


# ------------------------------------------------------------------------ argument adaptation


def test_adapt_attention_rejects_unsupported_head_dim_and_dtype():
    q = torch.randn(1, 3, 2, 80, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"head dim D.*\(32, 64, 128\).*got 80"):
        cb.adapt_attention(q, q, q, AttentionArgs())
    q32 = torch.randn(1, 3, 2, 64)
    with pytest.raises(TypeError, match=r"q must be float16 or bfloat16.*float32"):
        cb.adapt_attention(q32, q32, q32, AttentionArgs())


def test_adapt_attention_padded_defaults_and_bias_cast():
    q = torch.randn(2, 5, 4, 64, dtype=torch.float16).transpose(1, 2).transpose(1, 2)
    k = torch.randn(2, 7, 2, 64, dtype=torch.float16)
    bias = torch.randn(1, 4, 5, 7)  # fp32 bias, fp16 q
    a = cb.adapt_attention(q, k, k, AttentionArgs(attn_bias=bias))
    assert (a.max_seqlen_q, a.max_seqlen_k) == (5, 7)
    assert a.softmax_scale == pytest.approx(1 / 8)
    assert a.attn_bias.dtype == torch.float16 and a.attn_bias.shape == bias.shape
    assert a.q.is_contiguous() and a.cu_seqlens_q is None


def test_adapt_attention_varlen_and_relative_bias():
    q = torch.randn(9, 2, 128, dtype=torch.bfloat16)
    cu = torch.tensor([0, 4, 9], dtype=torch.int64)
    rel = RelativePositionBias(torch.randn(32, 2), bidirectional=True, num_buckets=32, max_distance=128)
    varlen = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=5, max_seqlen_k=5)
    a = cb.adapt_attention(q, q, q, AttentionArgs(attn_bias=rel, softmax_scale=0.5, **varlen))
    assert a.cu_seqlens_q.dtype == torch.int32 and a.cu_seqlens_q.tolist() == [0, 4, 9]
    assert (a.max_seqlen_q, a.max_seqlen_k, a.softmax_scale) == (5, 5, 0.5)
    assert a.attn_bias is None  # the T5 table goes to the kernels, looked up there
    assert a.rel_table.dtype == torch.float32 and a.rel_table.shape == (32, 2)
    assert a.rel_lut.dtype == torch.int32 and a.rel_lut.tolist() == rel.bucket_lut(5, 5).tolist()
    big = RelativePositionBias(torch.randn(300, 2), num_buckets=300)  # past the kernels' cap: dense
    a = cb.adapt_attention(q, q, q, AttentionArgs(attn_bias=big, **varlen))
    assert a.rel_lut is None and a.attn_bias.shape[-2:] == (5, 5) and a.attn_bias.dtype == torch.bfloat16


def test_adapt_attention_prefix_lengths_to_int32():
    q = torch.randn(2, 5, 2, 64, dtype=torch.bfloat16)
    a = cb.adapt_attention(q, q, q, AttentionArgs(causal=True, prefix_lengths=torch.tensor([3, 0])))
    assert a.prefix_lengths.dtype == torch.int32 and a.prefix_lengths.tolist() == [3, 0]
    assert cb.adapt_attention(q, q, q, AttentionArgs()).prefix_lengths is None


def test_adapt_layer_norm_dtype_rules():
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    w32, b16 = torch.randn(16), torch.randn(16, dtype=torch.bfloat16)
    a = cb.adapt_layer_norm(x, w32, b16, None)
    assert a.x.shape == (6, 16) and a.weight.dtype == a.bias.dtype == torch.float32
    a = cb.adapt_layer_norm(x, b16, b16, x)
    assert a.weight.dtype == torch.bfloat16 and a.residual.shape == (6, 16)
    assert cb.adapt_layer_norm(x, None, None, None).weight is None
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, got torch\.float64"):
        cb.adapt_layer_norm(x.double(), None, None, None)
    with pytest.raises(TypeError, match="residual must have x's dtype"):
        cb.adapt_layer_norm(x, None, None, x.float())
    with pytest.raises(ValueError, match=r"x\.shape\[-1\] must be <= 32768, got 32769"):
        cb.adapt_layer_norm(torch.empty(1, 32769, dtype=torch.float16), None, None, None)


def test_adapt_linear_cross_entropy():
    h = torch.randn(2, 3, 8, dtype=torch.float16)
    w = torch.randn(11, 8, dtype=torch.float16)
    y = torch.randint(0, 11, (2, 3), dtype=torch.int32)
    a = cb.adapt_linear_cross_entropy(h, w, y, torch.randn(11), "sum")
    assert a.hidden.shape == (6, 8) and a.labels.dtype == torch.int64 and a.labels.shape == (6,)
    assert a.bias.dtype == torch.float16
    with pytest.raises(TypeError, match="hidden must be float16 or bfloat16"):
        cb.adapt_linear_cross_entropy(h.float(), w.float(), y, None, "mean")
    with pytest.raises(ValueError, match="reduction"):
        cb.adapt_linear_cross_entropy(h, w, y, None, "avg")


def test_adapt_lora_casts_parameters_to_x_dtype():
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    a = cb.adapt_lora_linear(x, torch.randn(5, 8), None, torch.randn(2, 8), torch.randn(5, 2))
    assert a.x.shape == (6, 8) and a.bias is None
    assert {t.dtype for t in (a.weight, a.lora_a, a.lora_b)} == {torch.bfloat16}
    with pytest.raises(TypeError, match="x must be float16 or bfloat16"):
        cb.adapt_lora_linear(x.float(), torch.randn(5, 8), None, torch.randn(2, 8), torch.randn(5, 2))


# --------------------------------------------------------------- torch.library wiring on meta

_META_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    import _meta_ops
    from ptft_fast.ops import cuda_backend as cb
    from ptft_fast.ops.attention_args import AttentionArgs

    assert len(_meta_ops.schemas()) == 8, _meta_ops.schemas()
    lib = _meta_ops.install()  # keep a stand-in Library alive: its ops vanish with it
    M, bf, f16 = "meta", torch.bfloat16, torch.float16

    def leaf(*shape, dtype=bf):
        return torch.empty(shape, device=M, dtype=dtype).requires_grad_()

    # layer norm: fp32 weight with bf16 x, residual, dropout, return_residual
    x, w, b, r = leaf(3, 5, 64), leaf(64, dtype=torch.float32), leaf(64, dtype=torch.float32), leaf(3, 5, 64)
    y, h = cb.layer_norm_cuda(x, w, b, residual=r, dropout_p=0.1, return_residual=True)
    assert y.shape == h.shape == (3, 5, 64) and y.dtype == bf
    (y.float().sum() + h.float().sum()).backward()
    assert x.grad.shape == r.grad.shape == (3, 5, 64) and w.grad.dtype == torch.float32 and b.grad.shape == (64,)
    x2 = leaf(4, 32, dtype=torch.float32)
    cb.layer_norm_cuda(x2, None, rms=True).sum().backward()
    assert x2.grad.shape == (4, 32)

    # attention: padded, GQA, broadcast bias with grad, causal, dropout
    q, k, v = leaf(2, 7, 4, 64), leaf(2, 9, 2, 64), leaf(2, 9, 2, 64)
    bias = leaf(4, 7, 9)
    mask = torch.ones(2, 9, dtype=torch.bool, device=M)
    args = AttentionArgs(causal=True, key_padding_mask=mask, attn_bias=bias, dropout_p=0.1)
    o = cb.attention_cuda(q, k, v, args)
    assert o.shape == q.shape
    o.float().sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    assert bias.grad.shape == bias.shape and bias.grad.dtype == bf
    # T5 relative bias, looked up in the kernels: gradient into its (num_buckets, Hq) table
    from ptft_fast.ops.relative_bias import RelativePositionBias
    table = leaf(32, 4, dtype=torch.float32)
    rel = AttentionArgs(causal=True, attn_bias=RelativePositionBias(table))
    cb.attention_cuda(q, k, v, rel).float().sum().backward()
    assert table.grad.shape == (32, 4) and table.grad.dtype == torch.float32
    # varlen, fp16, no bias
    qv = leaf(11, 2, 128, dtype=f16)
    cu = torch.zeros(3, dtype=torch.int64, device=M)
    varlen = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=6, max_seqlen_k=6)
    ov = cb.attention_cuda(qv, qv, qv, AttentionArgs(**varlen))
    ov.float().sum().backward()
    assert ov.shape == qv.shape and qv.grad.shape == qv.shape
    # prefix LM: per-sequence prefix lengths, varlen
    qp = leaf(11, 2, 64)
    pre = torch.zeros(2, dtype=torch.int64, device=M)
    op = cb.attention_cuda(qp, qp, qp, AttentionArgs(causal=True, prefix_lengths=pre, **varlen))
    op.float().sum().backward()
    assert op.shape == qp.shape and qp.grad.shape == qp.shape

    # linear cross-entropy
    for reduction in ("mean", "sum", "none"):
        hid, wt, bs = leaf(2, 3, 16), leaf(50, 16), leaf(50)
        lab = torch.zeros(2, 3, dtype=torch.int64, device=M)
        loss = cb.linear_cross_entropy_cuda(hid, wt, lab, bs, label_smoothing=0.1, z_loss=1e-4, reduction=reduction)
        assert loss.shape == ((2, 3) if reduction == "none" else ()) and loss.dtype == bf
        loss.float().sum().backward()
        assert hid.grad.shape == hid.shape and wt.grad.shape == wt.shape and bs.grad.shape == (50,)

    # LoRA: frozen base, then a trainable base with bias
    xl, a_, b_ = leaf(2, 3, 16, dtype=f16), leaf(4, 16, dtype=torch.float32), leaf(24, 4, dtype=torch.float32)
    wf = torch.empty(24, 16, device=M, dtype=f16)
    yl = cb.lora_linear_cuda(xl, wf, None, a_, b_, 2.0, dropout_p=0.1)
    assert yl.shape == (2, 3, 24)
    yl.float().sum().backward()
    assert xl.grad.shape == xl.shape and a_.grad.dtype == torch.float32 and b_.grad.shape == (24, 4)
    wt2, bb2 = leaf(24, 16, dtype=f16), leaf(24, dtype=f16)
    cb.lora_linear_cuda(leaf(5, 16, dtype=f16), wt2, bb2, leaf(4, 16, dtype=f16), leaf(24, 4, dtype=f16), 0.5).sum().backward()
    assert wt2.grad.shape == (24, 16) and bb2.grad.shape == (24,)
    print("META OK")
    """
)


def test_library_wiring_on_meta_tensors():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", _META_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and "META OK" in proc.stdout, proc.stdout + proc.stderr


def test_check_csrc_skips_without_nvcc():
    env = {**os.environ, "NVCC": "/nonexistent/nvcc"}
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "check_csrc.sh")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        "check_csrc: SKIPPED — nvcc not found (set NVCC or install the CUDA toolkit)"
    ]


def test_adapt_attention_copies_views_off_the_16_byte_grid():
    base = torch.randn(4 * 2 * 64 + 1, dtype=torch.bfloat16)
    q = base[1:].view(1, 4, 2, 64)  # contiguous, but 2 bytes past an aligned start
    a = cb.adapt_attention(q, q, q, AttentionArgs())
    assert a.q.storage_offset() == 0 and torch.equal(a.q, q)
    aligned = base[8:].view(-1)[: 4 * 2 * 64 - 8]
    assert cb._aligned16(aligned) is aligned
