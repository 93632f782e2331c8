"""DESIGN.md's tolerance rule for kernels, shared by the Triton (and CUDA) kernel tests."""

from __future__ import annotations

import torch


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_rule(
    name: str, out: torch.Tensor, ref32: torch.Tensor, ref_low: torch.Tensor | None, atol: float = 1e-5
):
    """|out - ref32| <= 2 * |ref_low - ref32| + atol * (1 + max|ref32|).

    out: kernel result; ref32: the fp32 oracle; ref_low: PyTorch's own result in out's dtype (None
    for fp32, where the bound is just the tight atol).
    """
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    torch_err = 0.0 if ref_low is None else max_err(ref_low, ref32)
    scale = ref32.abs().max().item() if ref32.numel() else 0.0
    bound = 2.0 * torch_err + atol * (1.0 + scale)
    err = max_err(out, ref32)
    assert err <= bound, (
        f"{name}: max error {err:.3g} > bound {bound:.3g} (torch's own error {torch_err:.3g})"
    )
