"""Attention fwd+bwd: ptft backends vs torch eager, torch.compile, SDPA (flash / cuDNN) and
flash-attn. Issue-4 target: ptft-triton ≥ 1.1× SDPA's flash backend (the baseline on CUDA) at
seq 512–8192, head dim 64 and 128, causal and not, bf16.

Run: ``ptft bench ops`` or ``python -m ptft_fast.benchmarks.bench_attention [--quick]``.
"""

from __future__ import annotations

import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ptft_fast import ops
from ptft_fast.benchmarks.harness import Case, run_case, run_script
from ptft_fast.benchmarks.kernel_providers import checked, compiled, fwd_bwd, optional, ptft, require_cuda

KIND = "ops"


def _eager(q, k, v, causal):
    """softmax(q kᵀ / √D) v with the full (B, H, T, T) score matrix: the unfused composition."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    s = (qt @ kt.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return (s.softmax(-1).to(q.dtype) @ vt).transpose(1, 2)


def _sdpa(q, k, v, causal, backend):
    def call():
        with sdpa_kernel(backend):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
            )
        return out.transpose(1, 2)

    return call


def _flash_attn(q, k, v, causal, device):
    require_cuda(device, "flash-attn")
    fa = optional("flash_attn", "flash-attn (pip install flash-attn)")
    return fwd_bwd(lambda: fa.flash_attn_func(q, k, v, causal=causal), (q, k, v))


def _case(device, dtype, bsz, seq, heads, dim, causal):
    q, k, v = (
        torch.randn(bsz, seq, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)
    )
    inputs = (q, k, v)
    fwd_flops = 4.0 * bsz * heads * seq * seq * dim * (0.5 if causal else 1.0)
    case = Case(
        f"attention{' causal' if causal else ''}",
        f"B={bsz} T={seq} H={heads} D={dim}",
        str(dtype).removeprefix("torch."),
        "fwd+bwd",
        flops=3.5 * fwd_flops,  # backward does 2.5x the forward's matmul work
        tokens=bsz * seq,
    )
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.attention(q, k, v, causal=causal, backend=be), inputs), device
    )
    providers["torch-eager"] = lambda: fwd_bwd(lambda: _eager(q, k, v, causal), inputs)
    providers["torch-compile"] = lambda: fwd_bwd(lambda: compiled(_eager, device)(q, k, v, causal), inputs)
    providers["sdpa-flash"] = checked(
        lambda: fwd_bwd(_sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION), inputs)
    )
    providers["sdpa-cudnn"] = checked(
        lambda: fwd_bwd(_sdpa(q, k, v, causal, SDPBackend.CUDNN_ATTENTION), inputs)
    )
    providers["flash-attn"] = lambda: _flash_attn(q, k, v, causal, device)
    return case, providers


def _matmul_peak(device: torch.device, dtype: torch.dtype) -> list[dict]:
    """A large square matmul: the measured matmul peak that attention's TFLOP/s is read against."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    case = Case(
        "matmul (measured peak)", f"{n}x{n}x{n}", str(dtype).removeprefix("torch."), "fwd", flops=2.0 * n**3
    )
    return run_case(case, {"torch-matmul": lambda: lambda: a @ b}, device, repeats=20, memory=False)


def suite(device: torch.device, quick: bool) -> list[dict]:
    width = 2048  # heads × head dim
    if device.type == "cuda":
        dtype = torch.bfloat16
        seqs = (512, 2048) if quick else (512, 1024, 2048, 4096, 8192)
        dims = (64,) if quick else (64, 128)
        tokens = 16384
    else:  # CPU: the reference path only; small enough to finish in seconds (quick: a rehearsal)
        dtype, seqs, dims, tokens = torch.float32, (128,), (64,), 512
        if quick:
            seqs, tokens, width = (64,), 128, 256
    baseline = "sdpa-flash" if device.type == "cuda" else "torch-eager"
    rows = _matmul_peak(device, dtype) if device.type == "cuda" else []
    for seq in seqs:
        for dim in dims:
            for causal in (False, True):
                heads = width // dim
                case, providers = _case(device, dtype, max(1, tokens // seq), seq, heads, dim, causal)
                # providers that cannot run here (flash kernels on CPU) raise and get a skipped row
                # CPU peak memory is measured in a forked child, which can deadlock in OpenMP after torch ran
                # threads in the parent: measure memory on CUDA only
                rows += run_case(
                    case,
                    providers,
                    device,
                    baseline=baseline,
                    repeats=5 if quick else 20,
                )
    return rows


if __name__ == "__main__":
    run_script(suite, "attention", "attention fwd+bwd")
