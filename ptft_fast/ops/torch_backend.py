"""The ``torch`` backend: the references of ``reference.py`` in the input dtype (no upcast).

Native fused ops do the work (``F.layer_norm``/``F.rms_norm`` and SDPA upcast internally), so
this is as fast as eager PyTorch allows and runs on any device. A small cross-entropy (at most
``SMALL_LOGITS`` logits) is one ``F.linear`` + ``F.cross_entropy``: below that size the chunked
algorithm's dozens of small host calls cost more than the (N, V) block it avoids, which is far
smaller than the blocks the chunked path itself materializes (``reference.LINEAR_CROSS_ENTROPY_BLOCK_ELEMS``).
"""

from functools import partial

import torch
import torch.nn.functional as F

from ptft_fast.ops import reference
from ptft_fast.ops.cross_entropy import check_labels_in_range
from ptft_fast.ops.dispatch import register

SMALL_LOGITS = 1 << 16  # rows × vocab (256 KiB of fp32 logits)

register("layer_norm", "torch")(partial(reference.layer_norm_ref, upcast=False))
register("attention", "torch")(partial(reference.attention_ref, upcast=False))
register("lora_linear", "torch")(partial(reference.lora_linear_ref, upcast=False))


@register("linear_cross_entropy", "torch")
def linear_cross_entropy_torch(
    hidden, weight, labels, bias=None, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, reduction="mean",
    loss_dtype=None,
):  # fmt: skip
    """See :func:`ptft_fast.ops.linear_cross_entropy`. Labels are range-checked here on CPU (by
    ``F.cross_entropy`` itself on the small path); the public op checks device tensors."""
    vocab = weight.shape[0]
    if z_loss == 0.0 and labels.numel() * vocab <= SMALL_LOGITS:
        fused_bias = bias is None or bias.dtype == hidden.dtype
        logits = F.linear(hidden, weight, bias if fused_bias else None)
        if not fused_bias:  # an fp32 bias next to half inputs: added in fp32, as the chunked path does
            logits = logits + bias
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # the loss in fp32, as the chunked path computes it
        target = labels if labels.dtype == torch.int64 else labels.long()
        if target.dim() != 1:
            logits, target = logits.reshape(-1, vocab), target.reshape(-1)
        try:
            loss = F.cross_entropy(
                logits,
                target,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                reduction=reduction,
            )
        except IndexError:  # a target out of range: report it as the contract says
            check_labels_in_range(labels, vocab, ignore_index)
            raise
        if reduction == "none":
            loss = loss.view(labels.shape)
        dtype = loss_dtype or hidden.dtype
        return loss if loss.dtype == dtype else loss.to(dtype)
    if labels.is_cpu:
        check_labels_in_range(labels, vocab, ignore_index)
    return reference.linear_cross_entropy_ref(
        hidden, weight, labels, bias, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, reduction=reduction, upcast=False, loss_dtype=loss_dtype,
    )  # fmt: skip
