"""``ptft_fast.patch(model)``: run a transformers (or peft) model on ptft_fast ops; ``unpatch`` undoes it.

Nothing in a model class is rewritten and no family is listed by name:

- norms are found by parameters and behaviour (``ptft_fast.hf.patch_norms``: LayerNorm, RMSNorm,
  Gemma's (1 + w) RMSNorm) and swapped module-for-module, sharing the parameters;
- attention goes through transformers' public ``AttentionInterface`` registration and
  ``set_attn_implementation`` (``ptft_fast.hf.patch_attention``), for every model that calls its
  attention through that interface (every modern family does);
- the training loss of an LM head goes through ``ops.linear_cross_entropy`` without building the
  logits (``ptft_fast.hf.patch_loss``);
- peft LoRA ``Linear`` layers run on ``ops.lora_linear`` (``ptft_fast.hf.patch_peft``).

State dicts, tied weights, ``save_pretrained`` and peft's adapter handling are unchanged. The
:class:`PatchReport` says what was patched and what was left alone, and why. transformers is
imported only when ``patch`` is called.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ptft_fast.hf import patch_attention, patch_loss, patch_norms, patch_peft

_STATE = "_ptft_fast_patch"  # attribute of the patched transformers model: (report, undo steps)


@dataclass
class PatchReport:
    """What ``ptft_fast.patch`` replaced in one model, and what it left alone (with the reason)."""

    model: str  # class name of the model passed in (e.g. LlamaForCausalLM, PeftModelForCausalLM)
    family: str  # config.model_type
    backend: str | None  # backend the patched ops run on (None → the current default per call)
    norms: dict[str, str] = field(
        default_factory=dict
    )  # qualified name → "layer_norm" | "rms" | "offset_rms"
    attention: str | None = None  # attn implementation now set, e.g. "ptft_fast"
    attention_modules: int = 0  # attention modules that look their function up from it
    loss: str | None = None  # the fused loss: projection and route (LossPlan.describe)
    lora: list[str] = field(default_factory=list)  # peft LoRA Linear layers now on ops.lora_linear
    not_patched: list[str] = field(default_factory=list)  # left alone, and why

    def __str__(self) -> str:
        forms = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(self.norms.values()).items()))
        lines = [
            f"ptft_fast.patch({self.model}, family={self.family!r}, backend={self.backend!r})",
            f"  norms:     {len(self.norms)} replaced" + (f" ({forms})" if forms else ""),
            f"  attention: {self.attention or 'unchanged'} ({self.attention_modules} modules)",
            f"  loss:      {'fused at ' + self.loss if self.loss else 'unchanged'}",
            f"  lora:      {len(self.lora)} layers on ops.lora_linear",
        ]
        lines += [f"  left alone: {why}" for why in self.not_patched]
        return "\n".join(lines)


def _unwrap(model) -> tuple[nn.Module, nn.Module]:
    """(the transformers PreTrainedModel, the module tree holding LoRA layers) of ``model``."""
    from transformers import PreTrainedModel

    base = model
    if not isinstance(model, PreTrainedModel) and callable(getattr(model, "get_base_model", None)):
        base = model.get_base_model()  # a peft PeftModel
    if not isinstance(base, PreTrainedModel):
        raise TypeError(
            "ptft_fast.patch: expected a transformers PreTrainedModel or a peft PeftModel, got "
            f"{type(model).__name__}; for your own modules use ptft_fast.nn directly"
        )
    return base, model


def _set_attention(model, backend: str | None) -> tuple[str | None, int, Callable[[], None] | None]:
    from transformers import PreTrainedModel

    name = patch_attention.register(backend)
    before = model.config._attn_implementation
    model.set_attn_implementation(name)

    def undo() -> None:
        model.set_attn_implementation(before)

    refused = [
        type(m).__name__
        for m in model.modules()
        if isinstance(m, PreTrainedModel) and m.config._attn_implementation != name
    ]
    if refused:
        undo()
        raise RuntimeError(
            f"ptft_fast.patch: {', '.join(sorted(set(refused)))} did not accept the attention "
            f"implementation {name!r} (set_attn_implementation refused); the model is unchanged"
        )
    # The layers that call the interface carry their `config` and softmax `scaling`.
    count = sum(
        1
        for m in model.modules()
        if hasattr(m, "scaling") and hasattr(m, "config") and not isinstance(m, PreTrainedModel)
    )
    if count == 0:
        undo()
        return None, 0, None
    return name, count, undo


def _patch_all(base, root, report: PatchReport, steps: list, *, norms, attention, loss, lora) -> None:
    backend = report.backend
    if attention:  # first: the only step transformers may refuse
        why = patch_attention.unsupported(base)
        if why is None:
            report.attention, report.attention_modules, undo = _set_attention(base, backend)
            if undo is None:
                why = f"{type(base).__name__} has no attention layer"
            else:
                steps.append(undo)
        if why is not None:
            report.not_patched.append(f"attention: {why}")
    if norms:
        originals, report.norms, left = patch_norms.swap(base, backend, skip=patch_peft.is_peft_layer)
        steps.append(lambda: patch_norms.restore(base, originals))
        report.not_patched += left
    if loss:
        plan, why = patch_loss.plan(base)
        if plan is None:
            report.not_patched.append(f"loss: {why}")
        else:
            steps.append(patch_loss.install(base, plan, backend))
            report.loss = plan.describe()
    if lora:
        report.lora, left, undo = patch_peft.install(root, backend)
        steps.append(undo)
        report.not_patched += left


def patch(
    model,
    *,
    norms: bool = True,
    attention: bool = True,
    loss: bool = True,
    lora: bool = True,
    backend: str | None = None,
) -> PatchReport:
    """Run a transformers model's norms, attention, training loss and peft LoRA layers on ptft_fast ops, in place.

    Args:
        model: a transformers ``PreTrainedModel``, or a peft ``PeftModel`` around one (patch after
            ``get_peft_model`` so that the LoRA layers are found).
        norms: swap every module that computes a LayerNorm, RMSNorm or (1 + w) RMSNorm (found by
            behaviour, ``patch_norms``) for ``ptft_fast.nn.LayerNorm`` / ``RMSNorm`` /
            ``OffsetRMSNorm`` sharing its parameters.
        attention: register ``ops.attention`` in transformers' ``AttentionInterface`` (as
            "ptft_fast" or "ptft_fast_<backend>") and ``set_attn_implementation`` to it. Masks
            (padding, causal, sliding window), T5's position bias, GQA, ``scaling`` and ``dropout``
            pass through; attention weights are not returned (as with SDPA). Models with
            attention-logit soft-capping or sinks are left alone.
        loss: compute the training-mode loss of ``*ForCausalLM`` / ``*ForMaskedLM`` /
            ``*ForConditionalGeneration`` heads from the hidden states with
            ``ops.linear_cross_entropy`` (``patch_loss``); such calls return ``logits=None``.
            Eval-mode calls are unchanged and return logits. Heads whose logits are soft-capped or
            scaled before the loss are left alone.
        lora: run peft LoRA ``Linear`` layers on ``ops.lora_linear`` (``patch_peft``).
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default per call).

    Returns:
        A :class:`PatchReport` of what was replaced and what was left alone (and why).
        ``unpatch(model)`` restores the original modules.
    """
    base, root = _unwrap(model)
    if getattr(base, _STATE, None) is not None:
        raise RuntimeError(
            f"ptft_fast.patch: this {type(base).__name__} is already patched (unpatch it first)"
        )
    if backend is not None:
        from ptft_fast.ops.dispatch import _validate_choice

        backend = _validate_choice(backend, "ptft_fast.patch")
    report = PatchReport(model=type(model).__name__, family=str(base.config.model_type), backend=backend)
    steps: list[Callable[[], None]] = []
    try:
        _patch_all(base, root, report, steps, norms=norms, attention=attention, loss=loss, lora=lora)
    except BaseException:
        _undo(steps)
        raise
    if not (report.norms or report.attention or report.loss or report.lora):
        _undo(steps)
        raise ValueError(
            f"ptft_fast.patch: nothing in {type(model).__name__} runs on ptft_fast ops: "
            + "; ".join(report.not_patched or ["every part was switched off"])
        )
    setattr(base, _STATE, (report, steps))
    return report


def _undo(steps: list[Callable[[], None]]) -> None:
    for step in reversed(steps):
        step()


def unpatch(model) -> PatchReport:
    """Undo ``patch(model)``: the original norm modules, LM head, loss function, attention
    implementation and peft forwards come back (the very objects that were there). Returns the
    report of the patch that was undone."""
    base, _ = _unwrap(model)
    state = getattr(base, _STATE, None)
    if state is None:
        raise ValueError(f"ptft_fast.unpatch: this {type(base).__name__} is not patched")
    report, steps = state
    _undo(steps)
    delattr(base, _STATE)
    return report
