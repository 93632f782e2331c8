"""ptft_fast.hf — Hugging Face interop: load HF-format directories into ptft_fast models, save back.

``load_pretrained(dir)`` → (model, config) for BERT/RoBERTa (MLM, pre-training), GPT-2, T5
(v1.0 and v1.1) and BART; ``save_pretrained(model, dir)`` writes config.json + model.safetensors
that ``transformers`` loads. Name tables live in ``ptft_fast.hf.mapping`` (one per family).
"""

from ptft_fast.hf.checkpoint import CheckpointKeyError, load_pretrained, read_state_dict, save_pretrained
from ptft_fast.hf.configs import ARCHITECTURES, UnsupportedCheckpointError, from_hf_config, to_hf_config

__all__ = [
    "ARCHITECTURES",
    "CheckpointKeyError",
    "UnsupportedCheckpointError",
    "from_hf_config",
    "load_pretrained",
    "read_state_dict",
    "save_pretrained",
    "to_hf_config",
]
