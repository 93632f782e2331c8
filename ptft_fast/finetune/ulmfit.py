"""ULMFiT's fine-tuning recipe (Howard & Ruder, 2018) for any ptft_fast model, and the optimizer /
schedule the fine-tuning loop builds from it.

- Layer groups, bottom to top: the embeddings (token/position embeddings, T5's relative position
  tables, a soft prompt), then every transformer layer of every stack (encoder before decoder), then
  everything else (final norms, the LM/MLM head, the task head, prefix encoders, a scalar mix).
- Discriminative learning rates (``layer_lr_decay`` = d): the top group gets the peak lr, each group
  below d times the one above it (ULMFiT's d = 1/2.6).
- Slanted triangular learning rates (``schedule="stlr"``): a short linear rise over ``cut_frac`` of
  the steps from lr/ratio to lr, then a long linear decay back to lr/ratio.
- Gradual unfreezing: in epoch e only the top e groups are trained; the others keep their weights
  until all are unfrozen. Each layer group has its own optimizer groups, whose lr is 0 while the
  layer group is frozen (AdamW's update and its decoupled weight decay both scale with the lr, so
  the weights stay bit for bit); on one process the frozen gradients are also dropped before the
  step (AdamW skips those parameters: no moments, no step count, no share of the clipping norm).
  DeepSpeed owns the gradients (ZeRO's flat buffers), so there only the zero lr holds the layers:
  their gradients still enter the clipping norm and Adam's moments, which start warm when the
  layer group opens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn

SCHEDULES = ("linear", "stlr")
_LAYER = re.compile(r"^(.*?\blayers)\.(\d+)\.")
_BOTTOM = ("embed", "shared", "rel_bias", "soft_prompt")


def layer_groups(model: nn.Module, params: list[nn.Parameter] | None = None) -> list[list[nn.Parameter]]:
    """Parameters of ``model`` (only those in ``params`` when given) in layer groups, bottom to
    top; groups left empty are dropped."""
    keep = None if params is None else {id(p) for p in params}
    bottom: list[nn.Parameter] = []
    top: list[nn.Parameter] = []
    stacks: dict[str, dict[int, list[nn.Parameter]]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or (keep is not None and id(p) not in keep):
            continue
        seen.add(id(p))
        m = _LAYER.match(name)
        if m:
            stacks.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(p)
        elif any(part.startswith(_BOTTOM) for part in name.split(".")):
            bottom.append(p)
        else:
            top.append(p)
    layers = [group for stack in stacks.values() for _, group in sorted(stack.items())]
    return [g for g in (bottom, *layers, top) if g]


def param_groups(
    model: nn.Module,
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    layer_lr_decay: float = 1.0,
    *,
    per_layer: bool = False,
) -> list[dict]:
    """AdamW parameter groups: per layer group lr · decay^(groups above it), weight decay on
    matrices only (biases, norms and vectors such as (IA)³'s are not decayed). With a decay or
    ``per_layer`` (gradual unfreezing) every group carries ``layer_group``: its layer group's index,
    bottom to top, as :func:`layer_groups` numbers them."""
    if not 0.0 < layer_lr_decay <= 1.0:
        raise ValueError(f"layer_lr_decay must be in (0, 1], got {layer_lr_decay}")
    split = per_layer or layer_lr_decay != 1.0
    groups = layer_groups(model, params) if split else [params]
    out = []
    for depth, group in enumerate(reversed(groups)):
        group_lr = lr * layer_lr_decay**depth
        for decay, ps in (
            (weight_decay, [p for p in group if p.dim() >= 2]),
            (0.0, [p for p in group if p.dim() < 2]),
        ):
            if ps:
                out.append({"params": ps, "lr": group_lr, "weight_decay": decay})
                if split:
                    out[-1]["layer_group"] = len(groups) - 1 - depth
    return out


def stlr(total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> Callable[[int], float]:
    """Slanted triangular multiplier of the peak lr at step t (0-based), ULMFiT eq. 3:
    cut = ⌊T · cut_frac⌋, p = t / cut before it and 1 − (t − cut) / (cut · (1/cut_frac − 1)) after,
    multiplier (1 + p (ratio − 1)) / ratio: 1/ratio at t = 0, 1 at t = cut, back to 1/ratio at T."""
    if not 0.0 < cut_frac < 1.0 or ratio < 1.0:
        raise ValueError(f"stlr: cut_frac must be in (0, 1) and ratio >= 1, got {cut_frac}, {ratio}")
    cut = max(1, math.floor(total_steps * cut_frac))

    def multiplier(t: int) -> float:
        p = t / cut if t < cut else 1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
        return (1.0 + max(p, 0.0) * (ratio - 1.0)) / ratio

    return multiplier


def linear_warmup_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    warm = max(1, int(warmup_ratio * total_steps))
    return lambda s: min((s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm)))


def schedule(name: str, total_steps: int, *, warmup_ratio: float, cut_frac: float, ratio: float):
    """The lr multiplier function for ``name`` in SCHEDULES."""
    if name == "stlr":
        return stlr(total_steps, cut_frac, ratio)
    if name == "linear":
        return linear_warmup_decay(total_steps, warmup_ratio)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


class GradualUnfreezing:
    """Epoch e trains the top e layer groups of the trainable parameters. ``optimizer``: one built
    on :func:`param_groups` with ``per_layer`` (each group knows its ``layer_group``); a frozen
    group's ``lr_scale`` is 0 (its open scale kept as ``open_lr_scale``). Call
    :meth:`drop_frozen_grads` between backward and the optimizer step where the gradients are
    the parameters' own (not DeepSpeed's)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], optimizer=None):
        self.groups = layer_groups(model, params)
        self.frozen: list[nn.Parameter] = []
        self.optimizer_groups = [] if optimizer is None else optimizer.param_groups
        for g in self.optimizer_groups:
            if "layer_group" not in g:
                raise ValueError("GradualUnfreezing: the optimizer's groups are not per layer group")
            g.setdefault("open_lr_scale", g.get("lr_scale", 1.0))

    def start_epoch(self, epoch: int) -> int:
        """Freeze all but the top ``epoch`` groups (1-based epoch); returns how many train."""
        n = min(epoch, len(self.groups))
        live = len(self.groups) - n  # groups below this index stay frozen
        self.frozen = [p for g in self.groups[:live] for p in g]
        for g in self.optimizer_groups:
            g["lr_scale"] = g["open_lr_scale"] if g["layer_group"] >= live else 0.0
        return n

    @torch.no_grad()
    def drop_frozen_grads(self) -> None:
        for p in self.frozen:
            p.grad = None
