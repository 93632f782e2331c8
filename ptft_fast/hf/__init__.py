"""ptft_fast.hf — Hugging Face interop.

Checkpoints: ``load_pretrained(dir)`` → (model, config) for BERT/RoBERTa (MLM, pre-training),
GPT-2, T5 (v1.0 and v1.1) and BART; ``save_pretrained(model, dir)`` writes config.json +
model.safetensors that ``transformers`` loads; name tables in ``ptft_fast.hf.mapping`` (one per
family). Patching a transformers (or peft) model onto ptft_fast ops, and undoing it:
``ptft_fast.patch`` / ``ptft_fast.unpatch`` (``ptft_fast.hf.patch``).

Names are resolved lazily so that ``import ptft_fast`` stays light.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CheckpointKeyError": "ptft_fast.hf.checkpoint",
    "load_pretrained": "ptft_fast.hf.checkpoint",
    "read_state_dict": "ptft_fast.hf.checkpoint",
    "save_pretrained": "ptft_fast.hf.checkpoint",
    "ARCHITECTURES": "ptft_fast.hf.configs",
    "UnsupportedCheckpointError": "ptft_fast.hf.configs",
    "from_hf_config": "ptft_fast.hf.configs",
    "to_hf_config": "ptft_fast.hf.configs",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ptft_fast.hf' has no attribute {name!r}")
