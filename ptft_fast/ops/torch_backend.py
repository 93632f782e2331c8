"""The ``torch`` backend: the references of ``reference.py`` in the input dtype (no upcast).

Native fused ops do the work (``F.layer_norm``/``F.rms_norm`` and SDPA upcast internally), so
this is as fast as eager PyTorch allows and runs on any device.
"""

from functools import partial

from ptft_fast.ops import reference
from ptft_fast.ops.dispatch import register

register("layer_norm", "torch")(partial(reference.layer_norm_ref, upcast=False))
register("attention", "torch")(partial(reference.attention_ref, upcast=False))
register("linear_cross_entropy", "torch")(partial(reference.linear_cross_entropy_ref, upcast=False))
register("lora_linear", "torch")(partial(reference.lora_linear_ref, upcast=False))
