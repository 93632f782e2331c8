"""The ``torch`` backend: the references of ``reference.py`` in the input dtype (no upcast).

Native fused ops do the work (``F.layer_norm``/``F.rms_norm`` and SDPA upcast internally), so
this is as fast as eager PyTorch allows and runs on any device. A small cross-entropy (at most
``SMALL_LOGITS`` logits) is one ``F.linear`` + ``F.cross_entropy``: below that size the chunked
algorithm's dozens of small host calls cost more than the (N, V) block it avoids, which is far
smaller than the blocks the chunked path itself materializes (``reference.LINEAR_CROSS_ENTROPY_BLOCK_ELEMS``).
"""

import dataclasses
from functools import partial

import torch
import torch.nn.functional as F

from ptft_fast.ops import reference
from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.cross_entropy import check_labels_in_range
from ptft_fast.ops.dispatch import register

SMALL_LOGITS = 1 << 16  # rows × vocab (256 KiB of fp32 logits)

register("layer_norm", "torch")(partial(reference.layer_norm_ref, upcast=False))


@register("attention", "torch")
def attention_torch(q, k, v, args: AttentionArgs | None = None, **options):
    """See :func:`ptft_fast.ops.attention`. Varlen self-attention on the CPU runs its sequences in
    groups of similar length (lengths in (2^(g-1), 2^g]), each group padded to its own longest
    (:func:`attention_by_length`); everything else is the reference in the input dtype."""
    if args is not None and not options and _groups_pay(q, args):
        return attention_by_length(q, k, v, args)
    return reference.attention_ref(q, k, v, args, upcast=False, **options)


def _groups_pay(q: torch.Tensor, args: AttentionArgs) -> bool:
    """Varlen self-attention on the CPU without a dense bias (the bias is in padded coordinates)."""
    if not args.varlen or args.attn_bias is not None or q.device.type != "cpu":
        return False
    same = args.cu_seqlens_q is args.cu_seqlens_k or torch.equal(args.cu_seqlens_q, args.cu_seqlens_k)
    return same and not torch.compiler.is_compiling()


def attention_by_length(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs
) -> torch.Tensor:
    """Varlen self-attention (q/k/v packed (total, H, D), one cu_seqlens) as one reference call
    per length group: sequences of lengths in (2^(g-1), 2^g] are padded to their group's longest,
    not to the batch's, so many short documents next to one long one cost about their own
    length² (at most 2× it) instead of the longest²; returns (total, Hq, Dv) like the reference."""
    cu = args.cu_seqlens_q.long()
    lengths = cu[1:] - cu[:-1]
    group = torch.tensor([max(n - 1, 0).bit_length() for n in lengths.tolist()])  # ⌈log2 n⌉
    kinds = group.unique().tolist()
    if len(kinds) == 1:
        return reference.attention_ref(q, k, v, args, upcast=False)
    seq, _ = reference.varlen_positions(cu, q.shape[0])
    token_group = group[seq]
    parts, outs = [], []
    for g in kinds:
        member = group == g
        sub = lengths[member]
        sub_cu = F.pad(sub.cumsum(0), (1, 0)).to(args.cu_seqlens_q.dtype)
        longest = int(sub.max())
        prefix = None if args.prefix_lengths is None else args.prefix_lengths[member]
        sub_args = dataclasses.replace(
            args, cu_seqlens_q=sub_cu, cu_seqlens_k=sub_cu, max_seqlen_q=longest, max_seqlen_k=longest,
            prefix_lengths=prefix,
        )  # fmt: skip
        tokens = torch.nonzero(token_group == g).squeeze(1)
        parts.append(tokens)
        outs.append(reference.attention_ref(q[tokens], k[tokens], v[tokens], sub_args, upcast=False))
    out = torch.cat(outs)
    return out.new_zeros(q.shape[0], *out.shape[1:]).index_copy(0, torch.cat(parts), out)


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
