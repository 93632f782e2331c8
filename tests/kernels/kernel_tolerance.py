"""The kernel tolerance rule (docs/ARCHITECTURE.md, "How to add an op"), shared by the Triton (and
CUDA) kernel tests."""

from __future__ import annotations

import torch


def on_grid(dtype: torch.dtype, tensors):
    """fp32 test inputs rounded to ``dtype``'s values (kept in their own dtype): a dict or list of
    tensors (None and non-floating entries pass through). The fp32 oracle then sees exactly the
    inputs that the kernel and PyTorch's low-precision run see, so the rule compares the errors of
    the computation, not of rounding the inputs (which would dominate and make it a coin flip)."""

    def one(t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return t.to(dtype).to(t.dtype)

    if isinstance(tensors, dict):
        return {n: one(t) for n, t in tensors.items()}
    return [one(t) for t in tensors]


def linear_cross_entropy_inputs(
    n, hdim, vocab, dtype, *, with_bias=True, ignore_frac=0.3, generator=None, device="cpu"
):
    """hidden (n, hdim), weight (vocab, hdim), bias (vocab,) | None on ``dtype``'s grid (fp32), and
    labels (n,) with about ``ignore_frac`` of them -100; drawn in that order from ``generator``."""
    g = {"generator": generator, "device": device}
    h = torch.randn(n, hdim, **g)
    w = torch.randn(vocab, hdim, **g) / hdim**0.5
    bias = torch.randn(vocab, **g) if with_bias else None
    labels = torch.randint(0, vocab, (n,), **g)
    labels[torch.rand(n, **g) < ignore_frac] = -100
    h, w, bias = on_grid(dtype, (h, w, bias))
    return h, w, bias, labels


def attention_low_precision(attention_ref, q, k, v, **kw):
    """PyTorch's own low-precision attention, the baseline of the 2x rule: ``attention_ref(q, k,
    v, upcast=False, **kw)`` with, on CUDA, the key/value heads repeated to the query heads.

    q: (B, Tq, Hq, D) or packed (total, Hq, D); k, v: (..., Hkv, D). On CUDA,
    ``F.scaled_dot_product_attention`` runs grouped-query heads only in its flash kernel, which
    takes no float mask, so GQA with a bias or padding falls back to the math backend, which keeps
    every intermediate in fp32 for fp16/bf16 inputs: its "low-precision" error is then only the
    output rounding, and a flash-style kernel (dS rounded to the input dtype, the dsum term read
    from the rounded output, as in PyTorch's own fused kernels) would fail the rule by chance.
    Repeated heads (what transformers' ``repeat_kv`` does) let SDPA use its fused low-precision
    kernels for every case; the gradients of k and v are summed back over the group by autograd.
    """
    if q.is_cuda and k.shape[-2] != q.shape[-2]:
        group = q.shape[-2] // k.shape[-2]
        k, v = (t.repeat_interleave(group, dim=-2) for t in (k, v))
    return attention_ref(q, k, v, upcast=False, **kw)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_rule(
    name: str,
    out: torch.Tensor,
    ref32: torch.Tensor,
    ref_low: torch.Tensor | None,
    atol: float = 1e-5,
    scale: float | None = None,
):
    """|out - ref32| <= 2 * |ref_low - ref32| + atol * (1 + scale), scale = max|ref32| by default.

    out: kernel result; ref32: the fp32 oracle; ref_low: PyTorch's own result in out's dtype (None
    for fp32, where the bound is just the tight atol). ``scale``: the magnitude the result's rounding
    error grows with, where that is not the result's own (a sum of terms that cancel: Σ|terms|).
    """
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    torch_err = 0.0 if ref_low is None else max_err(ref_low, ref32)
    if scale is None:
        scale = ref32.abs().max().item() if ref32.numel() else 0.0
    bound = 2.0 * torch_err + atol * (1.0 + scale)
    err = max_err(out, ref32)
    assert err <= bound, (
        f"{name}: max error {err:.3g} > bound {bound:.3g} (torch's own error {torch_err:.3g})"
    )


def compare_with_grads(name: str, kernel, reference, inputs: dict, atol: float = 1e-5):
    """kernel(**inputs) vs reference(**inputs) in fp32: output and the grads of every floating
    input that requires grad (inputs may be non-contiguous views)."""
    diff = {n: t for n, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad}
    results = []
    for fn in (kernel, reference):
        out = fn(**inputs)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype)
        results.append((out, torch.autograd.grad(out, list(diff.values()), g)))
    (out, grads), (ref, ref_grads) = results
    assert_rule(f"{name} out", out, ref, None, atol)
    for n, got, want in zip(diff, grads, ref_grads, strict=True):
        assert_rule(f"{name} d{n}", got, want, None, atol)
