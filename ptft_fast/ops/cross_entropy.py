"""Public op: fused linear + cross-entropy that never materializes the full (N, V) logits."""

from __future__ import annotations

import torch

from ptft_fast.ops import checks
from ptft_fast.ops.dispatch import resolve
from ptft_fast.ops.graph_mode import in_graph

OP = "linear_cross_entropy"
REDUCTIONS = ("mean", "sum", "none")


def check_labels_in_range(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Labels lie in [0, V) or equal ignore_index: ValueError on CPU, async device assert on GPU.

    The public op checks device tensors; on CPU each backend checks (the torch backend's small
    path lets ``F.cross_entropy`` check, and calls this only to word the error)."""
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if labels.is_cpu and not in_graph():  # in a graph: the assert, not a data-dependent branch
        if bad.any():
            value = labels[bad][0].item()
            raise ValueError(
                f"{OP}: labels must be in [0, {vocab}) or ignore_index={ignore_index}, found {value}"
            )
    else:
        torch._assert_async(
            ~bad.any(), f"{OP}: labels must be in [0, {vocab}) or ignore_index={ignore_index}"
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``labels``, chunked and masked.

    Rows labeled ``ignore_index`` are dropped before the vocab projection (masked-token loss for
    MLM); the rest is processed in (rows, vocab) blocks with an online log-sum-exp, so the (N, V)
    logits never exist. No host synchronization on GPU.

    Args:
        hidden: (..., H) final hidden states.
        weight: (V, H) output projection (often the tied input embedding).
        labels: (...) int64 targets in [0, V), or ignore_index.
        bias: (V,) or None.
        ignore_index: label value excluded from the loss and its normalization.
        label_smoothing: in [0, 1), as in ``F.cross_entropy``.
        z_loss: coefficient of the auxiliary logsumexp² term (PaLM), >= 0.
        reduction: "mean" (over labeled rows) | "sum" | "none" (labels-shaped, 0 where ignored).
        backend: "auto" | "torch" | "triton" | "cuda"; None → current default.

    Returns:
        Scalar loss, or labels-shaped losses for reduction="none", in hidden's dtype (float32
        under ``torch.autocast``, whose matmul dtype the logits then use).

    Dtypes (docs/op_contracts.md): under autocast hidden, weight and bias are cast first; then
    weight has hidden's dtype, bias has it or float32 when hidden is float16/bfloat16.
    """
    checks.tensor(OP, "hidden", hidden)
    checks.tensor(OP, "weight", weight, ndim=2)
    checks.tensor(OP, "labels", labels, floating=False)
    if labels.dtype not in checks.INDEX_DTYPES:
        raise TypeError(f"{OP}: labels must be int64 or int32, got {labels.dtype}")
    h_shape, w_shape = hidden.shape, weight.shape
    if not h_shape or h_shape[:-1] != labels.shape:
        raise ValueError(
            f"{OP}: hidden must be labels.shape + (H,), got hidden {tuple(h_shape)} "
            f"and labels {tuple(labels.shape)}"
        )
    checks.not_empty(OP, "hidden", hidden)
    if w_shape[1] != h_shape[-1]:
        checks.size(OP, "weight", weight, 1, h_shape[-1], "hidden.shape[-1] (H)")
    checks.not_empty(OP, "weight", weight)
    if bias is not None:
        checks.tensor(OP, "bias", bias, ndim=1)
        checks.shape(OP, "bias", bias, (w_shape[0],), "weight.shape[0] (V)")
    device = hidden.device
    if weight.device != device or labels.device != device or (bias is not None and bias.device != device):
        checks.same_device(OP, "hidden", hidden, weight=weight, labels=labels, bias=bias)
    # under autocast the matmul runs in the autocast dtype and the loss comes back in fp32, as
    # F.cross_entropy's does (autocast runs losses in fp32)
    kind = checks.device_type(hidden)
    loss_dtype = None
    if torch.is_autocast_enabled(kind):
        if hidden.dtype != torch.float64:
            loss_dtype = torch.float32
        hidden, weight, bias = checks.autocast_inputs(kind, hidden, weight, bias)
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        checks.dtypes(OP, "hidden", hidden, operands={"weight": weight}, params={"bias": bias})
    checks.probability(OP, "label_smoothing", label_smoothing)
    checks.positive(OP, "z_loss", z_loss, allow_zero=True)
    checks.choice(OP, "reduction", reduction, REDUCTIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{OP}: ignore_index must be an int, got {type(ignore_index).__name__}")
    if not labels.is_cpu:  # an async device assert; CPU labels are checked by the backends
        check_labels_in_range(labels, w_shape[0], ignore_index)
    impl = resolve(OP, backend, hidden)
    return impl(
        hidden,
        weight,
        labels,
        bias,
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        z_loss=float(z_loss),
        reduction=reduction,
        loss_dtype=loss_dtype,
    )
