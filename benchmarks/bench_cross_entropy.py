"""Masked-token linear cross-entropy fwd+bwd: ptft backends vs full logits + F.cross_entropy (the
baseline), its torch.compile, and Liger's fused linear cross-entropy. Issue-4 targets at B=32,
T=512, H=768, V=30522: with 15% labeled ≥ 5× faster and ≥ 10× less peak memory than the
baseline; with all tokens labeled ≤ 1.05× its time with ≥ 70% less memory.

Run: ``ptft bench ops`` or ``python -m ptft_fast.benchmarks.bench_cross_entropy [--quick]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_fast import ops
from ptft_fast.benchmarks.harness import Case, run_case, run_script
from ptft_fast.benchmarks.kernel_providers import checked, compiled, fwd_bwd, optional, ptft, require_cuda

KIND = "ops"


def _full_logits(h, w, labels):
    return F.cross_entropy((h @ w.T).float(), labels)


def _liger(h, w, labels, device):
    require_cuda(device, "Liger-Kernel")
    mod = optional("liger_kernel.ops.fused_linear_cross_entropy", "Liger-Kernel (pip install liger-kernel)")
    return lambda: mod.LigerFusedLinearCrossEntropyFunction.apply(h, w, labels)


def _case(device, dtype, n_rows, hidden, vocab, labeled):
    h = torch.randn(n_rows, hidden, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) * 0.02).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (n_rows,), device=device)
    labels[torch.rand(n_rows, device=device) >= labeled] = -100
    inputs = (h, w)
    useful = 6.0 * n_rows * labeled * hidden * vocab  # logits, dh and dW matmuls of labeled rows
    shape = f"N={n_rows} H={hidden} V={vocab} labeled={labeled:.0%}"
    case = Case("linear_cross_entropy", shape, str(dtype).removeprefix("torch."), "fwd+bwd", flops=useful)
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.linear_cross_entropy(h, w, labels, backend=be), inputs), device
    )
    providers["torch-full-logits"] = lambda: fwd_bwd(lambda: _full_logits(h, w, labels), inputs)
    providers["torch-compile"] = lambda: fwd_bwd(lambda: compiled(_full_logits, device)(h, w, labels), inputs)
    providers["liger"] = checked(lambda: fwd_bwd(_liger(h, w, labels, device), inputs))
    return case, providers


def suite(device: torch.device, quick: bool) -> list[dict]:
    if device.type == "cuda":
        dtype, n_rows, hidden, vocab = torch.bfloat16, 32 * 512, 768, 30522
        if quick:
            n_rows = 8 * 512
    else:  # quick on CPU: a rehearsal's size
        dtype, n_rows, hidden, vocab = (
            (torch.float32, 128, 64, 2048) if quick else (torch.float32, 512, 128, 8192)
        )
    rows = []
    for labeled in (0.15, 1.0):
        case, providers = _case(device, dtype, n_rows, hidden, vocab, labeled)
        rows += run_case(
            case,
            providers,
            device,
            baseline="torch-full-logits",
            repeats=5 if quick else 20,
        )
    return rows


if __name__ == "__main__":
    run_script(suite, "cross_entropy", "masked-token linear cross-entropy fwd+bwd")
