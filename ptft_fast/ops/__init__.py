"""ptft_fast.ops — the four op families, each with a backend choice per call.

``layer_norm``, ``attention``, ``linear_cross_entropy``, ``lora_linear``; references in
``ptft_fast.ops.reference``; backend selection in ``ptft_fast.ops.dispatch``.

Mixed dtypes follow one rule for all four (``checks.dtypes``, docs/op_contracts.md): the main
input (x, q, hidden) sets the compute dtype, matmul operands must have it, norm weights, biases
and the residual may have it or float32 next to float16/bfloat16 inputs; anything else is a
TypeError naming the argument. Under ``torch.autocast`` the matmul ops cast their inputs first.
"""

from ptft_fast.ops import torch_backend  # noqa: F401  (registers the reference backend)
from ptft_fast.ops.attention import attention, attention_weights
from ptft_fast.ops.cross_entropy import linear_cross_entropy
from ptft_fast.ops.dispatch import (
    BackendUnavailableError,
    backend_available,
    current_backend,
    registered,
    use_backend,
)
from ptft_fast.ops.layer_norm import layer_norm
from ptft_fast.ops.lora import lora_linear

__all__ = [
    "BackendUnavailableError",
    "attention",
    "attention_weights",
    "backend_available",
    "current_backend",
    "layer_norm",
    "linear_cross_entropy",
    "lora_linear",
    "registered",
    "use_backend",
]
