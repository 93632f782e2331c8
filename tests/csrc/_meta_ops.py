"""Test helper: stand-in for ``ptft_fast._C`` on machines without it.

Declares the ``torch.ops.ptft_fast`` schemas exactly as ``csrc/binding.cpp`` does (parsed from
its ``m.def("...")`` strings, so they cannot drift) without any kernel, then runs
``cuda_backend._register_library()``. Ops then run on ``meta`` tensors through the fake
implementations, and autograd through the registered backward formulas — which checks the
Python wiring (arity, saved tensors, output shapes and dtypes) without a GPU.

Import it only in a fresh process: it defines the ``ptft_fast`` op namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

BINDING = Path(__file__).resolve().parents[2] / "csrc" / "binding.cpp"


def schemas() -> list[str]:
    """The schema strings of ``TORCH_LIBRARY(ptft_fast, m)`` in csrc/binding.cpp."""
    text = BINDING.read_text()
    block = text[text.index("TORCH_LIBRARY(ptft_fast, m)") :]
    block = block[: block.index("\n}\n")]
    out = []
    for call in re.findall(r"m\.def\((.*?)\);", block, flags=re.S):
        out.append("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call)))
    return out


def install() -> torch.library.Library:
    lib = torch.library.Library("ptft_fast", "DEF")  # a test-only stand-in for _C
    for schema in schemas():
        lib.define(schema)
    from ptft_fast.ops import cuda_backend

    cuda_backend._register_library()
    return lib
