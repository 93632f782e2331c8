"""Parameter-efficient fine-tuning: LoRA, bottleneck adapters, prefix tuning, prompt tuning, (IA)³.

``get_peft_model(model, method, config)`` applies a method, freezes the base, keeps the task head
(modules named ``head``/``classifier``/...) trainable, and returns the (possibly wrapped) model.
``save_adapter`` writes the trainable weights (adapter + head) as safetensors plus a JSON config.
"""

from __future__ import annotations

from torch import nn

from ptft_fast.peft.adapters import AdapterConfig, BottleneckAdapter, apply_adapters
from ptft_fast.peft.core import (
    DEFAULT_HEAD_NAMES,
    ParamReport,
    load_adapter_weights,
    mark_trainable,
    param_report,
    read_adapter_config,
    save_adapter,
)
from ptft_fast.peft.ia3 import IA3Config, IA3Linear, apply_ia3, merge_ia3
from ptft_fast.peft.lora import (
    LoraConfig,
    apply_lora,
    merge_and_unload_lora,
    merge_drift,
    merge_lora,
    unmerge_lora,
)
from ptft_fast.peft.prefix import PrefixEncoder, PrefixTuning, PrefixTuningConfig
from ptft_fast.peft.prompt import PromptTuning, PromptTuningConfig

METHODS = ("none", "lora", "adapter", "prefix", "prompt", "ia3")
CONFIGS = {
    "lora": LoraConfig,
    "adapter": AdapterConfig,
    "prefix": PrefixTuningConfig,
    "prompt": PromptTuningConfig,
    "ia3": IA3Config,
}


def get_peft_model(
    model: nn.Module, method: str, config=None, *, init_ids=None, head_names=DEFAULT_HEAD_NAMES
) -> nn.Module:
    """Apply ``method`` (one of METHODS) with ``config`` (its dataclass; None → defaults).

    For "prefix"/"prompt" the returned module wraps ``model``; for the others ``model`` is edited
    in place and returned. ``init_ids``: prompt tuning's initial token ids (from vocabulary text).
    """
    if method not in METHODS:
        raise ValueError(f"get_peft_model: method must be one of {METHODS}, got {method!r}")
    if method == "none":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    config = config if config is not None else CONFIGS[method]()
    if method == "lora":
        apply_lora(model, config)
    elif method == "adapter":
        apply_adapters(model, config)
    elif method == "ia3":
        apply_ia3(model, config)
    elif method == "prefix":
        model = PrefixTuning(model, config)
    else:
        model = PromptTuning(model, config.num_virtual_tokens, init_ids)
    mark_trainable(model, head_names)
    return model


MERGEABLE = ("lora", "ia3")  # methods whose weights fold into the base model's


def merge_and_unload(model: nn.Module) -> int:
    """Fold every LoRA and (IA)³ module into a plain linear of the base architecture (in place);
    returns how many were folded. Adapters, prefixes and prompts add computation and stay."""
    return merge_and_unload_lora(model) + merge_ia3(model)


__all__ = [
    "CONFIGS",
    "MERGEABLE",
    "METHODS",
    "AdapterConfig",
    "BottleneckAdapter",
    "IA3Config",
    "IA3Linear",
    "LoraConfig",
    "ParamReport",
    "PrefixEncoder",
    "PrefixTuning",
    "PrefixTuningConfig",
    "PromptTuning",
    "PromptTuningConfig",
    "get_peft_model",
    "load_adapter_weights",
    "mark_trainable",
    "merge_and_unload",
    "merge_drift",
    "merge_lora",
    "param_report",
    "read_adapter_config",
    "save_adapter",
    "unmerge_lora",
]
