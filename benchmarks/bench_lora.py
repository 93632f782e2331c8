"""LoRA linear fwd+bwd (frozen W; grads for x, A, B): ptft backends vs the unfused PEFT-style
composition (the baseline), its torch.compile, and the frozen base matmul alone. Issue-4
targets at r=16, 4096×4096: ≥ 1.3× the composition and ≤ 10% over the base matmul alone.

Run: ``ptft bench ops`` or ``python -m ptft_fast.benchmarks.bench_lora [--quick]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_fast import ops
from ptft_fast.benchmarks.harness import Case, run_case, run_script
from ptft_fast.benchmarks.kernel_providers import compiled, fwd_bwd, ptft

KIND = "ops"


def _peft_style(x, w, b, a, bb, scaling, p):
    """What peft's LoraLayer does: base linear, then dropout → A → B → scale, added."""
    return F.linear(x, w, b) + F.linear(F.linear(F.dropout(x, p), a), bb) * scaling


def _case(device, dtype, n_rows, d_in, d_out, rank, p):
    x = torch.randn(n_rows, d_in, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(d_out, d_in, device=device) * 0.02).to(dtype)
    b = torch.zeros(d_out, device=device, dtype=dtype)
    a = (torch.randn(rank, d_in, device=device) * 0.02).to(dtype).requires_grad_()
    bb = (torch.randn(d_out, rank, device=device) * 0.02).to(dtype).requires_grad_()
    inputs = (x, a, bb)
    # base fwd + dx, plus the low-rank fwd and its three grads
    flops = 2.0 * n_rows * d_in * d_out * 2 + 2.0 * n_rows * rank * (d_in + d_out) * 3
    shape = f"N={n_rows} {d_in}x{d_out} r={rank} p={p}"
    case = Case("lora_linear", shape, str(dtype).removeprefix("torch."), "fwd+bwd", flops=flops)
    providers = ptft(
        lambda be: fwd_bwd(lambda: ops.lora_linear(x, w, b, a, bb, 2.0, dropout_p=p, backend=be), inputs),
        device,
    )
    providers["torch-peft-style"] = lambda: fwd_bwd(lambda: _peft_style(x, w, b, a, bb, 2.0, p), inputs)
    providers["torch-compile"] = lambda: fwd_bwd(
        lambda: compiled(_peft_style, device)(x, w, b, a, bb, 2.0, p), inputs
    )
    providers["base-matmul-only"] = lambda: fwd_bwd(lambda: F.linear(x, w, b), (x,))
    return case, providers


def suite(device: torch.device, quick: bool) -> list[dict]:
    if device.type == "cuda":
        dtype, n_rows, dim = torch.bfloat16, 8192 if not quick else 2048, 4096
    else:  # quick on CPU: a rehearsal's size
        dtype, n_rows, dim = torch.float32, 128 if quick else 512, 256 if quick else 512
    rows = []
    for p in (0.0, 0.1):
        case, providers = _case(device, dtype, n_rows, dim, dim, 16, p)
        rows += run_case(
            case,
            providers,
            device,
            baseline="torch-peft-style",
            repeats=5 if quick else 20,
        )
    return rows


if __name__ == "__main__":
    run_script(suite, "lora", "LoRA linear fwd+bwd")
