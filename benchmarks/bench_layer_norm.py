"""LayerNorm / RMSNorm with residual add, fwd+bwd: ptft backends vs torch eager (the baseline),
torch.compile and Liger-Kernel. Issue-4 targets: ≥ 85% of HBM bandwidth at BERT/GPT shapes and
≥ 1.0× torch at hidden 768/1024 (bf16).

Run: ``ptft bench ops`` or ``python -m ptft_fast.benchmarks.bench_layer_norm [--quick]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptft_fast import ops
from ptft_fast.benchmarks.harness import Case, run_case, run_script
from ptft_fast.benchmarks.kernel_providers import checked, compiled, fwd_bwd, optional, ptft, require_cuda

KIND = "ops"


def _eager(x, res, w, b, rms):
    h = x + res
    y = F.rms_norm(h, (h.shape[-1],), w) if rms else F.layer_norm(h, (h.shape[-1],), w, b)
    return y, h


def _liger(x, res, w, b, rms, device):
    require_cuda(device, "Liger-Kernel")
    if rms:
        mod = optional("liger_kernel.ops.rms_norm", "Liger-Kernel (pip install liger-kernel)")
        return lambda: mod.LigerRMSNormFunction.apply(x + res, w, 1e-5)
    mod = optional("liger_kernel.ops.layer_norm", "Liger-Kernel (pip install liger-kernel)")
    return lambda: mod.LigerLayerNormFunction.apply(x + res, w, b, 1e-5)


def _case(device, dtype, n_rows, hidden, rms):
    x, res = (torch.randn(n_rows, hidden, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    w = torch.randn(hidden, device=device, dtype=dtype, requires_grad=True)
    b = None if rms else torch.randn(hidden, device=device, dtype=dtype, requires_grad=True)
    inputs = tuple(t for t in (x, res, w, b) if t is not None)
    # fwd reads x, res and writes y, h; bwd reads dy, h and writes dx, dres
    moved = 8.0 * x.numel() * x.element_size()
    name = "rms_norm+residual" if rms else "layer_norm+residual"
    case = Case(name, f"N={n_rows} H={hidden}", str(dtype).removeprefix("torch."), "fwd+bwd", bytes=moved)
    providers = ptft(
        lambda be: fwd_bwd(
            lambda: ops.layer_norm(x, w, b, residual=res, rms=rms, return_residual=True, backend=be), inputs
        ),
        device,
    )
    providers["torch-eager"] = lambda: fwd_bwd(lambda: _eager(x, res, w, b, rms), inputs)
    providers["torch-compile"] = lambda: fwd_bwd(lambda: compiled(_eager, device)(x, res, w, b, rms), inputs)
    providers["liger"] = checked(lambda: fwd_bwd(_liger(x, res, w, b, rms, device), inputs))
    return case, providers


def suite(device: torch.device, quick: bool) -> list[dict]:
    if device.type == "cuda":
        dtype, n_rows = torch.bfloat16, 16384
        hiddens = (768, 4096) if quick else (768, 1024, 2048, 4096, 8192)
    else:  # quick on CPU: a rehearsal's size
        dtype, n_rows, hiddens = torch.float32, 256 if quick else 1024, (768,)
    rows = []
    for hidden in hiddens:
        for rms in (False, True):
            case, providers = _case(device, dtype, n_rows, hidden, rms)
            rows += run_case(
                case,
                providers,
                device,
                baseline="torch-eager",
                repeats=5 if quick else 30,
            )
    return rows


if __name__ == "__main__":
    run_script(suite, "layer_norm", "layer norm fwd+bwd")
