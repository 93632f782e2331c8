"""Test helper: the ``torch.ops.ptft_fast`` library for the meta-tensor wiring test, with or
without ``ptft_fast._C`` — ``ptft_fast.benchmarks.cuda_stub`` (schemas parsed from
csrc/binding.cpp, so they cannot drift; the loaded ones are checked against them when ``_C`` is
built). Ops then run on ``meta`` tensors through the fake implementations, and autograd through
the registered backward formulas — which checks the Python wiring (arity, saved tensors, output
shapes and dtypes) without a GPU.

Import it only in a fresh process: it may define the ``ptft_fast`` op namespace.
"""

from ptft_fast.benchmarks.cuda_stub import install, schemas

__all__ = ["install", "schemas"]
