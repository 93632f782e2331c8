"""Test helper: the ``torch.ops.ptft_fast`` library for the meta-tensor wiring test, with or
without ``ptft_fast._C``.

Without ``_C`` (CPU machines) it declares the schemas exactly as ``csrc/binding.cpp`` does
(parsed from its ``m.def("...")`` strings, so they cannot drift) without any kernel, then runs
``cuda_backend._register_library()``. With ``_C`` loaded, ``TORCH_LIBRARY(ptft_fast, m)`` owns the
namespace (a second definition is an error) and ``cuda_backend`` has already registered the
Python side at import: the helper then checks that the loaded schemas are the parsed ones. Either
way ops run on ``meta`` tensors through the fake implementations, and autograd through the
registered backward formulas — which checks the Python wiring (arity, saved tensors, output
shapes and dtypes) without a GPU.

Import it only in a fresh process: it may define the ``ptft_fast`` op namespace.
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


def install() -> torch.library.Library | None:
    """The library to keep alive while the ops are used (None when ``ptft_fast._C`` owns it)."""
    from ptft_fast.ops import cuda_backend

    if cuda_backend._C is not None:  # the real library, wired by cuda_backend at import
        for schema in schemas():
            want = torch._C.parse_schema(f"ptft_fast::{schema}")
            op = getattr(torch.ops.ptft_fast, want.name.split("::")[1]).default
            assert str(op._schema) == str(want), f"loaded {op._schema} != binding.cpp {want}"
        return None
    lib = torch.library.Library("ptft_fast", "DEF")  # a test-only stand-in for _C
    for schema in schemas():
        lib.define(schema)
    cuda_backend._register_library()
    return lib
