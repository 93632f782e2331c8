"""Fused loss for patched transformers LM/MLM heads.

The model's vocab projection (an ``nn.Linear``) is replaced by :class:`FusedLossLinear`, which
shares its parameters (tied embeddings stay tied, the state dict is unchanged). Forward hooks on
the model (public ``nn.Module`` API, no class rewrite) take ``labels`` out of a training-mode call,
hand them to the projection, and put the loss into the model's output: the projection computes
``ops.linear_cross_entropy`` from the hidden states, so the (B, T, V) logits are never built, and
the output carries ``logits=None``. Eval-mode calls (and calls without labels) run unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast import ops


@dataclass(frozen=True)
class LossHead:
    """How one transformers head computes its loss, so the fused loss can do the same."""

    projection: str  # dotted path of the vocab projection nn.Linear, e.g. "cls.predictions.decoder"
    shift: bool  # causal LM: position t is scored against label t + 1 (ForCausalLMLoss)
    num_items: bool  # honours num_items_in_batch (sum / n) like ForCausalLMLoss; else a plain mean
    decoder_inputs_from_labels: bool = False  # encoder-decoder: decoder_input_ids = shift_right(labels)


@dataclass
class _Pending:
    labels: torch.Tensor  # (B, T) targets aligned with the projection's input rows
    ignore_index: int
    num_items: torch.Tensor | int | None


class FusedLossLinear(nn.Linear):
    """The vocab projection of a patched model: an ``nn.Linear`` sharing the original parameters.

    While labels are pending (set by the model's pre-hook) its forward computes the loss from its
    input hidden states (..., H) with ``ops.linear_cross_entropy``, stores it in ``self.loss`` and
    returns a zero-stride stand-in for the (..., V) logits (no memory); otherwise it is the linear.
    """

    def __init__(self, linear: nn.Linear, backend: str | None) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # share, do not copy
        self.backend = backend
        self.pending: _Pending | None = None
        self.loss: torch.Tensor | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        job, self.pending = self.pending, None
        if job is None:
            return super().forward(input)
        labels = job.labels.to(input.device)
        if tuple(labels.shape) != tuple(input.shape[:-1]):
            raise ValueError(
                f"ptft_fast fused loss: labels of shape {tuple(labels.shape)} do not match the "
                f"{tuple(input.shape[:-1])} positions reaching the LM head (logits_to_keep with labels?)"
            )
        loss = ops.linear_cross_entropy(
            input,
            self.weight,
            labels,
            self.bias,
            ignore_index=job.ignore_index,
            reduction="mean" if job.num_items is None else "sum",
            backend=self.backend,
        )
        if job.num_items is not None:
            n = job.num_items
            loss = loss / (n.to(loss.device) if torch.is_tensor(n) else n)
        self.loss = loss
        return input.new_zeros(()).expand(*input.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", fused_loss=True"


class _Args:
    """Read/replace one argument of a forward call, whether passed by position or by name."""

    def __init__(self, forward) -> None:
        params = inspect.signature(forward).parameters.values()
        self.index = {
            p.name: i
            for i, p in enumerate(params)
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        }

    def get(self, args: tuple, kwargs: dict, name: str):
        if name in kwargs:
            return kwargs[name]
        i = self.index.get(name)
        return args[i] if i is not None and i < len(args) else None

    def set(self, args: tuple, kwargs: dict, name: str, value) -> tuple[tuple, dict]:
        i = self.index.get(name)
        if name not in kwargs and i is not None and i < len(args):
            return (*args[:i], value, *args[i + 1 :]), kwargs
        return args, {**kwargs, name: value}


def install(model: nn.Module, head: LossHead, backend: str | None) -> str:
    """Route ``model``'s training loss through ``ops.linear_cross_entropy``; returns the projection path."""
    parent_path, _, attr = head.projection.rpartition(".")
    parent = model.get_submodule(parent_path)
    linear = getattr(parent, attr)
    if type(linear) is not nn.Linear:
        raise TypeError(
            f"ptft_fast.patch: expected {type(model).__name__}.{head.projection} to be an nn.Linear, "
            f"got {type(linear).__name__}"
        )
    fused = FusedLossLinear(linear, backend)
    setattr(parent, attr, fused)
    call = _Args(model.forward)

    def take_labels(module, args, kwargs):
        labels = call.get(args, kwargs, "labels")
        if not module.training or labels is None:
            return None
        args, kwargs = call.set(args, kwargs, "labels", None)
        if (
            head.decoder_inputs_from_labels
            and call.get(args, kwargs, "decoder_input_ids") is None
            and call.get(args, kwargs, "decoder_inputs_embeds") is None
        ):
            decoder_ids = module.prepare_decoder_input_ids_from_labels(labels=labels)
            args, kwargs = call.set(args, kwargs, "decoder_input_ids", decoder_ids)
        ignore_index = kwargs.get("ignore_index", -100)
        target = labels
        if head.shift:
            target = kwargs.get("shift_labels")
            if target is None:  # position t predicts token t + 1; the last position has no target
                target = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        num_items = kwargs.get("num_items_in_batch") if head.num_items else None
        fused.pending = _Pending(target, ignore_index, num_items)
        return args, kwargs

    def put_loss(module, args, kwargs, output):
        loss, pending = fused.loss, fused.pending
        fused.loss = fused.pending = None
        if output is None:  # forward raised; nothing to report
            return None
        if pending is not None:
            raise RuntimeError(
                f"ptft_fast fused loss: {type(module).__name__} never called its LM head "
                f"({head.projection}) with the labels set"
            )
        if loss is None:
            return None
        if isinstance(output, tuple):  # return_dict=False: (logits, ...) → (loss, ...)
            return (loss, *output[1:])
        fields = {k: v for k, v in output.items() if k not in ("loss", "logits")}
        return type(output)(loss=loss, **fields)

    model.register_forward_pre_hook(take_labels, with_kwargs=True)
    model.register_forward_hook(put_loss, with_kwargs=True, always_call=True)
    return head.projection
