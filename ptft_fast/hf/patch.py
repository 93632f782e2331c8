"""``ptft_fast.patch(model)``: run a transformers model's norms, attention and loss on ptft_fast ops.

Nothing in a model class is rewritten: norms are swapped module-for-module (sharing the
parameters, so state dicts and tied weights are unchanged), attention goes through transformers'
public ``AttentionInterface`` registration and ``set_attn_implementation``, and the training loss
through forward hooks and a parameter-sharing replacement of the vocab projection
(``ptft_fast.hf.patch_loss``). transformers is imported only when ``patch`` is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ptft_fast.hf import patch_attention, patch_loss
from ptft_fast.hf.patch_loss import LossHead
from ptft_fast.nn import LayerNorm, RMSNorm

# model_type → (display name, {model class name: its LM/MLM loss head}). Models of a listed
# family get norms and attention patched; those with a head here also get the fused loss.
FAMILIES: dict[str, tuple[str, dict[str, LossHead]]] = {
    "bert": (
        "BERT",
        {
            "BertForMaskedLM": LossHead("cls.predictions.decoder", shift=False, num_items=False),
            "BertLMHeadModel": LossHead("cls.predictions.decoder", shift=True, num_items=True),
        },
    ),
    "roberta": (
        "RoBERTa",
        {
            "RobertaForMaskedLM": LossHead("lm_head.decoder", shift=False, num_items=False),
            "RobertaForCausalLM": LossHead("lm_head.decoder", shift=True, num_items=True),
        },
    ),
    "gpt2": ("GPT-2", {"GPT2LMHeadModel": LossHead("lm_head", shift=True, num_items=True)}),
    "t5": (
        "T5",
        {
            "T5ForConditionalGeneration": LossHead(
                "lm_head", shift=False, num_items=False, decoder_inputs_from_labels=True
            )
        },
    ),
}


@dataclass
class PatchReport:
    """What ``ptft_fast.patch`` replaced in one model."""

    model: str  # class name of the patched model
    family: str  # config.model_type
    backend: str | None  # backend the patched ops run on (None → the current default per call)
    norms: list[str] = field(default_factory=list)  # qualified names of the swapped norm modules
    attention: str | None = None  # attn implementation now set, e.g. "ptft_fast"
    attention_modules: int = 0  # attention modules that look their function up from it
    loss: str | None = None  # qualified name of the projection computing the fused loss
    not_patched: list[str] = field(default_factory=list)  # what was asked for but not done, and why

    def __str__(self) -> str:
        lines = [
            f"ptft_fast.patch({self.model}, family={self.family!r}, backend={self.backend!r})",
            f"  norms:     {len(self.norms)} replaced",
            f"  attention: {self.attention or 'unchanged'} ({self.attention_modules} modules)",
            f"  loss:      {'fused at ' + self.loss if self.loss else 'unchanged'}",
        ]
        lines += [f"  not patched: {why}" for why in self.not_patched]
        return "\n".join(lines)


def supported() -> str:
    """A human-readable list of the supported families and their fused-loss heads."""
    return "; ".join(
        f"{name} ({kind}: fused loss for {', '.join(heads)})" for kind, (name, heads) in FAMILIES.items()
    )


def _family(model) -> str:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"ptft_fast.patch: expected a transformers PreTrainedModel, got {type(model).__name__}; "
            "for your own modules use ptft_fast.nn directly"
        )
    kind = getattr(model.config, "model_type", None)
    if kind not in FAMILIES:
        raise ValueError(
            f"ptft_fast.patch: unsupported model {type(model).__name__} (model_type={kind!r}); "
            f"supported: {supported()}"
        )
    return kind


def _loss_head(model, heads: dict[str, LossHead]) -> LossHead | None:
    for cls in type(model).__mro__:
        if cls.__name__ in heads:
            return heads[cls.__name__]
    return None


def _swap_norms(model: nn.Module, backend: str | None) -> list[str]:
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    swapped = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.LayerNorm:
            new = LayerNorm.from_torch(module, backend=backend)
        elif type(module) is T5LayerNorm:
            new = RMSNorm.from_weight(module.weight, module.variance_epsilon, backend=backend)
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, new)
        swapped.append(name)
    return swapped


def _set_attention(model, backend: str | None) -> tuple[str, int]:
    from transformers import PreTrainedModel

    name = patch_attention.register(backend)
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    refused = [
        type(m).__name__
        for m in model.modules()
        if isinstance(m, PreTrainedModel) and m.config._attn_implementation != name
    ]
    if refused:
        model.set_attn_implementation(before)
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
    return name, count


def patch(
    model,
    *,
    norms: bool = True,
    attention: bool = True,
    loss: bool = True,
    backend: str | None = None,
) -> PatchReport:
    """Run a transformers model's norms, attention and training loss on ptft_fast ops, in place.

    Args:
        model: a transformers ``PreTrainedModel`` of a supported family (BERT, RoBERTa, GPT-2,
            T5); anything else raises, naming the class and the supported families.
        norms: swap ``nn.LayerNorm`` → ``ptft_fast.nn.LayerNorm`` and ``T5LayerNorm`` →
            ``ptft_fast.nn.RMSNorm`` (parameters shared, state dict unchanged).
        attention: register ``ops.attention`` in transformers' ``AttentionInterface`` (as
            "ptft_fast" or "ptft_fast_<backend>") and ``set_attn_implementation`` to it. Masks,
            T5's position bias, ``scaling`` and ``dropout`` pass through; attention weights are
            not returned (as with SDPA).
        loss: for LM/MLM heads (see ``FAMILIES``), compute the training-mode loss from the hidden
            states with ``ops.linear_cross_entropy``; such calls return ``logits=None``. Eval-mode
            calls are unchanged and return logits.
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default per call).

    Returns:
        A :class:`PatchReport` of what was replaced.
    """
    kind = _family(model)
    if getattr(model, "_ptft_fast_patch_report", None) is not None:
        raise RuntimeError(f"ptft_fast.patch: this {type(model).__name__} is already patched")
    if backend is not None:
        from ptft_fast.ops.dispatch import _validate_choice

        backend = _validate_choice(backend, "ptft_fast.patch")
    report = PatchReport(model=type(model).__name__, family=kind, backend=backend)
    if attention:  # first: the only step transformers may refuse, and it is undone if so
        report.attention, report.attention_modules = _set_attention(model, backend)
    if norms:
        report.norms = _swap_norms(model, backend)
    if loss:
        head = _loss_head(model, FAMILIES[kind][1])
        if head is None:
            report.not_patched.append(
                f"loss: {type(model).__name__} has no LM/MLM head ptft_fast fuses "
                f"(fused for {', '.join(FAMILIES[kind][1])})"
            )
        else:
            report.loss = patch_loss.install(model, head, backend)
    model._ptft_fast_patch_report = report
    return report
