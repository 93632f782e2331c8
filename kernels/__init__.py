"""Triton kernels and their launchers, installed as ``ptft_fast.kernels`` (never a top-level
``kernels`` module).

One module per op: ``layer_norm``, ``attention`` (+ ``attention_bwd``), ``cross_entropy``,
``lora``. Kernels are named ``_<op>_<fwd|bwd>_kernel`` and launched by ``<op>_fwd`` /
``<op>_bwd``, which take plain tensors (allocation, grid, block sizes); autograd and the
``torch.library`` registration live in ``ptft_fast.ops.triton_backend``. Nothing here imports
models or ``ptft_fast.ops``. On CPU the kernels run only under ``TRITON_INTERPRET=1`` (tests).
"""
