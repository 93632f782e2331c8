"""ptft_fast.nn — drop-in modules over ``ptft_fast.ops``.

``LayerNorm`` and ``RMSNorm`` subclass their ``torch.nn`` namesakes (same constructor, parameter
names and state dict) and run ``ops.layer_norm``; ``LinearCrossEntropyLoss`` wraps
``ops.linear_cross_entropy``; ``LoRALinear`` wraps ``ops.lora_linear``; ``Attention`` is a
q/k/v/o-projection attention layer over ``ops.attention``. Every module takes ``backend=`` (None →
the current default, see ``ptft_fast.ops.use_backend``).
"""

from ptft_fast.nn.attention import Attention
from ptft_fast.nn.lora import LoRALinear
from ptft_fast.nn.loss import LinearCrossEntropyLoss
from ptft_fast.nn.norm import LayerNorm, RMSNorm

__all__ = ["Attention", "LayerNorm", "LinearCrossEntropyLoss", "LoRALinear", "RMSNorm"]
