"""Fused loss under a patched transformers LM head (``*ForCausalLM``, ``*ForMaskedLM``, ...).

The vocab projection (``model.get_output_embeddings()``, an ``nn.Linear``) becomes a
:class:`FusedLossLinear` sharing its parameters (tied embeddings stay tied, the state dict is
unchanged). A forward pre-hook arms it on training-mode calls with ``labels``; armed, it returns a
shape-only stand-in for the (..., V) logits on the meta device (no memory; reading its values
fails loudly) instead of computing them. The loss is then computed by
``ops.linear_cross_entropy`` from the hidden states, on one of two routes:

- ``loss_function`` (every modern causal LM, also BERT/RoBERTa as decoders, GPT-2): the model
  calls ``self.loss_function(logits, labels, ...)``; the patch sets the model's ``loss_function``
  to one that, given the stand-in, computes the same loss as transformers' ``ForCausalLMLoss``
  (shift, ``shift_labels``, ``ignore_index``, ``num_items_in_batch``) or ``ForMaskedLMLoss`` from
  the hidden states. Logits changed between head and loss (soft-capping, scaling) are not the
  stand-in: such a call raises instead of computing another loss.
- ``own_ce`` (``*ForMaskedLM`` and encoder-decoder ``*ForConditionalGeneration`` classes that
  call ``CrossEntropyLoss`` themselves, e.g. BERT, RoBERTa, T5, BART): the pre-hook takes the
  labels out of the call (building ``decoder_input_ids`` from them as the model would), the head
  computes the mean cross-entropy from its input, and the forward hook puts it in the output.
  BART's ``final_logits_bias`` joins the projection's bias. Any other change of the head's output
  before the model returns it raises.

Armed calls return ``logits=None``. Eval-mode calls and calls without labels run unchanged.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast import ops

IGNORE_INDEX = -100
# config fields that change the logits between the head and the loss: the fused loss has none
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_OWN_CE = re.compile(r"CrossEntropyLoss\((ignore_index\s*=\s*-100)?\)")


@dataclass(frozen=True)
class LossPlan:
    """Where and how a model's training loss is fused."""

    projection: str  # qualified name of the vocab projection nn.Linear, e.g. "lm_head"
    route: str  # "loss_function" | "own_ce" (see the module docstring)
    shift: bool = False  # loss_function route: causal LM (position t scored against label t + 1)
    seq2seq: bool = False  # own_ce route: decoder_input_ids = prepare_decoder_input_ids_from_labels
    extra_bias: str | None = None  # own_ce route: a (1, V) buffer added to the logits (BART)

    def describe(self) -> str:
        kind = ("causal" if self.shift else "masked") if self.route == "loss_function" else "mean CE"
        extra = f" + {self.extra_bias}" if self.extra_bias else ""
        return f"{self.projection}{extra} ({self.route}, {kind})"


class FusedLossLinear(nn.Linear):
    """The vocab projection of a patched model: an ``nn.Linear`` sharing the original parameters.

    Unarmed it is that linear. Armed (by the model's pre-hook) its forward takes the hidden
    states (..., H) and returns a meta-device stand-in for the (..., V) logits; on the own_ce
    route it also computes the loss (``self.loss``), on the loss_function route it keeps the
    hidden states for the model's loss function (``self.stash``).
    """

    def __init__(self, linear: nn.Linear, backend: str | None) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # share, do not copy
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        self.armed: dict | None = None  # own_ce: {"labels", "bias"}; loss_function: {}
        self.stash: tuple[torch.Tensor, torch.Tensor] | None = None  # (hidden, stand-in)
        self.loss: torch.Tensor | None = None
        self.standin: torch.Tensor | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        job, self.armed = self.armed, None
        if job is None:
            return super().forward(input)
        shape = (*input.shape[:-1], self.out_features)
        self.standin = torch.empty(shape, dtype=input.dtype, device="meta")
        if "labels" not in job:
            self.stash = (input, self.standin)
            return self.standin
        labels = job["labels"].to(input.device)
        if tuple(labels.shape) != tuple(input.shape[:-1]):
            raise ValueError(
                f"ptft_fast fused loss: labels of shape {tuple(labels.shape)} do not match the "
                f"{tuple(input.shape[:-1])} positions reaching the LM head"
            )
        bias = self.bias if job["bias"] is None else job["bias"] + (0.0 if self.bias is None else self.bias)
        self.loss = cross_entropy(input, self.weight, labels, bias, IGNORE_INDEX, None, self.backend)
        return self.standin

    def extra_repr(self) -> str:
        return super().extra_repr() + ", fused_loss=True"


def cross_entropy(hidden, weight, target, bias, ignore_index: int, num_items, backend) -> torch.Tensor:
    """transformers' ``fixed_cross_entropy`` of ``hidden @ weight.T + bias``, never building the logits:
    mean over non-ignored targets, or sum / ``num_items`` when given. Returned as float32, as
    transformers' (it upcasts the logits); under autocast the op already reduces in float32, for a
    bfloat16 model outside autocast the value carries bfloat16 rounding."""
    loss = ops.linear_cross_entropy(
        hidden,
        weight,
        target,
        bias,
        ignore_index=ignore_index,
        reduction="mean" if num_items is None else "sum",
        backend=backend,
    ).float()
    if num_items is not None:
        loss = loss / (num_items.to(loss.device) if torch.is_tensor(num_items) else num_items)
    return loss


def _forward_source(model: nn.Module) -> str:
    try:
        return inspect.getsource(inspect.unwrap(type(model).forward))
    except (OSError, TypeError):
        return ""


def plan(model: nn.Module) -> tuple[LossPlan | None, str]:
    """(plan, "") when ``model``'s training loss can be fused, else (None, why not)."""
    from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss

    name = type(model).__name__
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    if head is None:
        return None, f"{name} has no LM head (get_output_embeddings() is None)"
    if type(head) is not nn.Linear:
        return None, f"{name}'s LM head is a {type(head).__name__}, not an nn.Linear"
    path = next(n for n, m in model.named_modules() if m is head)
    for field in LOGIT_TRANSFORMS:
        value = getattr(model.config, field, None)
        if value is not None:
            return (
                None,
                f"{name} transforms its logits before the loss ({field}={value}); the fused loss has no such step",
            )
    source = _forward_source(model)
    if "self.loss_function(" in source:
        loss = model.loss_function
        if loss is ForCausalLMLoss:
            return LossPlan(path, "loss_function", shift=True), ""
        if loss is ForMaskedLMLoss:
            return LossPlan(path, "loss_function", shift=False), ""
        return None, f"{name}'s loss ({getattr(loss, '__name__', loss)}) is not a token cross-entropy"
    if _OWN_CE.search(source) or _plain_ce_attribute(model, source):
        extra = (
            "final_logits_bias"
            if "self.final_logits_bias" in source and hasattr(model, "final_logits_bias")
            else None
        )
        if name.endswith("ForMaskedLM"):
            return LossPlan(path, "own_ce", extra_bias=extra), ""
        seq2seq = getattr(model.config, "is_encoder_decoder", False) and hasattr(
            model, "prepare_decoder_input_ids_from_labels"
        )
        if name.endswith("ForConditionalGeneration") and seq2seq:
            return LossPlan(path, "own_ce", seq2seq=True, extra_bias=extra), ""
    return (
        None,
        f"{name} computes no loss ptft_fast recognises (loss_function, or CrossEntropyLoss in a *ForMaskedLM / encoder-decoder *ForConditionalGeneration)",
    )


def _plain_ce_attribute(model: nn.Module, source: str) -> bool:
    """The forward calls ``self.<name>(...)`` on an ``nn.CrossEntropyLoss`` attribute with the
    defaults (mean, ignore_index -100, no weights or smoothing), as DistilBERT does."""
    for name, module in model.named_children():
        if (
            type(module) is nn.CrossEntropyLoss
            and f"self.{name}(" in source
            and module.reduction == "mean"
            and module.ignore_index == IGNORE_INDEX
            and module.weight is None
            and module.label_smoothing == 0.0
        ):
            return True
    return False


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


def _fused_loss_function(fused: FusedLossLinear, original: Callable, shift: bool) -> Callable:
    """A ``loss_function`` for the model: fused when handed the armed head's stand-in, else ``original``."""
    signature = inspect.signature(original)
    var_kw = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]

    def loss_function(*args, **kwargs):
        stash, fused.stash = fused.stash, None
        if stash is None:
            return original(*args, **kwargs)
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        a = dict(call.arguments)
        for extra in var_kw:
            a.update(a.pop(extra))
        hidden, standin = stash
        if a["logits"] is not standin:
            raise RuntimeError(
                "ptft_fast fused loss: the logits reaching loss_function are not the LM head's output "
                "(changed in between, e.g. soft-capped or scaled); patch with loss=False"
            )
        ignore_index = a.get("ignore_index", IGNORE_INDEX)
        target = a["labels"]
        if shift:  # position t predicts token t + 1; the last position has no target
            target = a.get("shift_labels")
            if target is None:
                target = F.pad(a["labels"], (0, 1), value=ignore_index)[..., 1:]
        target = target.to(hidden.device)
        return cross_entropy(
            hidden, fused.weight, target, fused.bias, ignore_index, a.get("num_items_in_batch"), fused.backend
        )

    return loss_function


def _drop_logits(output, standin: torch.Tensor, loss: torch.Tensor | None, extra_bias: bool, name: str):
    """The model output without the stand-in logits (and with ``loss`` when given)."""
    if isinstance(output, tuple):
        items = list(output)
        where = [i for i, v in enumerate(items) if v is standin or (extra_bias and _is_meta(v))]
    else:
        items = None
        logits = output.get("logits")
        where = [0] if logits is standin or (extra_bias and _is_meta(logits)) else []
    if not where:
        raise RuntimeError(
            f"ptft_fast fused loss: {name} changes its LM head's output before returning it; patch with loss=False"
        )
    if items is not None:
        del items[where[0]]
        return tuple(items) if loss is None else (loss, *items)
    fields = {k: v for k, v in output.items() if k != "logits" and not (loss is not None and k == "loss")}
    return type(output)(**fields) if loss is None else type(output)(loss=loss, **fields)


def _is_meta(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


def install(model: nn.Module, loss_plan: LossPlan, backend: str | None) -> Callable[[], None]:
    """Route ``model``'s training loss through ``ops.linear_cross_entropy``; returns the undo."""
    parent_path, _, attr = loss_plan.projection.rpartition(".")
    parent = model.get_submodule(parent_path)
    linear = getattr(parent, attr)
    fused = FusedLossLinear(linear, backend)
    call = _Args(model.forward)
    name = type(model).__name__
    own_ce = loss_plan.route == "own_ce"

    def arm(module, args, kwargs):
        labels = call.get(args, kwargs, "labels")
        if not module.training or labels is None:
            return None
        if not own_ce:
            fused.armed = {}
            return None
        args, kwargs = call.set(args, kwargs, "labels", None)
        if (
            loss_plan.seq2seq
            and call.get(args, kwargs, "decoder_input_ids") is None
            and call.get(args, kwargs, "decoder_inputs_embeds") is None
        ):
            decoder_ids = module.prepare_decoder_input_ids_from_labels(labels=labels)
            args, kwargs = call.set(args, kwargs, "decoder_input_ids", decoder_ids)
        bias = getattr(module, loss_plan.extra_bias).reshape(-1) if loss_plan.extra_bias else None
        fused.armed = {"labels": labels, "bias": bias}
        return args, kwargs

    def finish(module, args, kwargs, output):
        armed, stash, loss, standin = fused.armed, fused.stash, fused.loss, fused.standin
        fused.reset()
        if output is None or standin is None:  # forward raised, or an unarmed call
            return None
        if armed is not None:
            raise RuntimeError(
                f"ptft_fast fused loss: {name} never called its LM head ({loss_plan.projection})"
            )
        if stash is not None:
            raise RuntimeError(
                f"ptft_fast fused loss: {name} did not pass its LM head's output to loss_function; patch with loss=False"
            )
        return _drop_logits(output, standin, loss if own_ce else None, loss_plan.extra_bias is not None, name)

    setattr(parent, attr, fused)
    handles = [
        model.register_forward_pre_hook(arm, with_kwargs=True),
        model.register_forward_hook(finish, with_kwargs=True, always_call=True),
    ]
    had_own = "_loss_function" in vars(model)
    previous = vars(model).get("_loss_function")
    if not own_ce:
        model.loss_function = _fused_loss_function(fused, model.loss_function, loss_plan.shift)

    def undo() -> None:
        for handle in handles:
            handle.remove()
        setattr(parent, attr, linear)
        if own_ce:
            return
        if had_own:
            model.loss_function = previous
        else:
            del model._loss_function

    return undo
