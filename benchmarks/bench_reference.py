"""Reference (``backend="torch"``) ops vs the plain PyTorch composition they replace.

On CPU this is the issue-2 check that the reference path is as fast as eager PyTorch allows; on
GPU it also lists every compiled ptft backend that is available. Run: ``ptft bench ops --only reference`` or
``python -m ptft_fast.benchmarks.bench_reference``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_fast import ops
from ptft_fast.benchmarks.harness import Case, run_case, run_script
from ptft_fast.benchmarks.kernel_providers import fwd_bwd, ptft

KIND = "ops"


def _layer_norm(device, quick):
    rows_n, hidden = (1024, 768) if not quick else (256, 256)
    x = torch.randn(rows_n, hidden, device=device, requires_grad=True)
    res = torch.randn_like(x, requires_grad=True)
    w = torch.randn(hidden, device=device, requires_grad=True)
    b = torch.randn(hidden, device=device, requires_grad=True)
    inputs = (x, res, w, b)
    case = Case(
        "layer_norm+residual", f"N={rows_n} H={hidden}", "float32", "fwd+bwd", bytes=4.0 * x.numel() * 2 * 3
    )
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.layer_norm(x, w, b, residual=res, backend=be), inputs),
        device,
    )
    providers["torch-eager"] = lambda: fwd_bwd(lambda: F.layer_norm(x + res, (hidden,), w, b), inputs)
    return case, providers


def _attention(device, quick):
    bsz, seq, heads, dim = (4, 256, 8, 64) if not quick else (2, 64, 4, 32)
    q, k, v = (torch.randn(bsz, seq, heads, dim, device=device, requires_grad=True) for _ in range(3))
    flops = 4.0 * bsz * heads * seq * seq * dim * 2.5 / 2  # fwd (4·B·H·T²·D) + bwd (2.5×), causal half
    case = Case("attention causal", f"B={bsz} T={seq} H={heads} D={dim}", "float32", "fwd+bwd", flops=flops)
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.attention(q, k, v, causal=True, backend=be), (q, k, v)),
        device,
    )

    def sdpa():
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        ).transpose(1, 2)

    providers["torch-sdpa"] = lambda: fwd_bwd(sdpa, (q, k, v))
    return case, providers


def _cross_entropy(device, quick):
    n, hidden, vocab = (1024, 256, 30522) if not quick else (256, 64, 8192)
    h = torch.randn(n, hidden, device=device, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) * 0.02).requires_grad_()
    labels = torch.randint(0, vocab, (n,), device=device)
    labels[torch.rand(n, device=device) > 0.15] = -100  # MLM: 15% of rows labeled
    flops = 2.0 * n * 0.15 * hidden * vocab * 3
    case = Case("linear_cross_entropy 15%", f"N={n} H={hidden} V={vocab}", "float32", "fwd+bwd", flops=flops)
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.linear_cross_entropy(h, w, labels, backend=be), (h, w)),
        device,
    )
    providers["torch-full-logits"] = lambda: fwd_bwd(lambda: F.cross_entropy(h @ w.T, labels), (h, w))
    return case, providers


def _lora(device, quick):
    n, d_in, d_out, rank = (1024, 1024, 1024, 16) if not quick else (256, 256, 256, 8)
    x = torch.randn(n, d_in, device=device, requires_grad=True)
    w = torch.randn(d_out, d_in, device=device) * 0.02
    a = (torch.randn(rank, d_in, device=device) * 0.02).requires_grad_()
    b = (torch.randn(d_out, rank, device=device) * 0.02).requires_grad_()
    flops = 2.0 * n * d_out * d_in * 2 + 2.0 * n * rank * (d_in + d_out) * 3
    case = Case("lora_linear", f"N={n} {d_in}x{d_out} r={rank}", "float32", "fwd+bwd", flops=flops)
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.lora_linear(x, w, None, a, b, 2.0, backend=be), (x, a, b)),
        device,
    )
    providers["torch-peft-style"] = lambda: fwd_bwd(
        lambda: F.linear(x, w) + F.linear(F.linear(x, a), b) * 2.0, (x, a, b)
    )
    return case, providers


def suite(device: torch.device, quick: bool) -> list[dict]:
    rows = []
    for build in (_layer_norm, _attention, _cross_entropy, _lora):
        case, providers = build(device, quick)
        baseline = next(name for name in providers if not name.startswith("ptft-"))
        rows += run_case(
            case, providers, device, baseline=baseline, warmup=2 if quick else 3, repeats=5 if quick else 15
        )
    return rows


if __name__ == "__main__":
    run_script(suite, "reference_cpu", "reference ops vs plain PyTorch (fwd+bwd)")
