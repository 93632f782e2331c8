"""ptft_fast.nn — drop-in modules over ``ptft_fast.ops``.

``LayerNorm`` and ``RMSNorm`` subclass their ``torch.nn`` namesakes (same constructor, parameter
names and state dict) and run ``ops.layer_norm``; ``LinearCrossEntropyLoss`` wraps
``ops.linear_cross_entropy``; ``LoRALinear`` wraps ``ops.lora_linear``; ``Attention`` is an
attention layer over ``ops.attention`` with separate or fused (``qkv`` / ``kv``) projections, a KV
cache and the varlen form: the models' self- and cross-attention. Every module takes
``backend=`` (None → the current default, see ``ptft_fast.ops.use_backend``).
"""

from ptft_fast.nn.attention import Attention
from ptft_fast.nn.lora import LoRALinear
from ptft_fast.nn.loss import LinearCrossEntropyLoss
from ptft_fast.nn.norm import LayerNorm, RMSNorm

__all__ = ["Attention", "LayerNorm", "LinearCrossEntropyLoss", "LoRALinear", "RMSNorm"]
