"""A stand-in for ``ptft_fast._C`` where it is not built (CPU machines): the ``torch.ops.ptft_fast``
schemas exactly as ``csrc/binding.cpp`` declares them (parsed from its ``m.def("...")`` strings,
so they cannot drift), with ``cuda_backend._register_library()`` wiring autograd and fake
implementations on top.

``install()`` declares the schemas only (ops then run on ``meta`` tensors, through the fakes: the
wiring test of tests/csrc). ``install(cpu_kernels=True)`` also registers CPU kernels that only
allocate their outputs (shapes from the fake implementations): the CUDA backend's whole Python
path — argument adaptation, dispatcher, autograd — runs up to the launch, which is stubbed out
(the host-overhead benchmark). Use it only in a process of its own: it defines the ``ptft_fast``
op namespace, which the real extension owns when built.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

BINDING = Path(__file__).resolve().parents[1] / "csrc" / "binding.cpp"


def schemas() -> list[str]:
    """The schema strings of ``TORCH_LIBRARY(ptft_fast, m)`` in csrc/binding.cpp."""
    text = BINDING.read_text()
    block = text[text.index("TORCH_LIBRARY(ptft_fast, m)") :]
    block = block[: block.index("\n}\n")]
    out = []
    for call in re.findall(r"m\.def\((.*?)\);", block, flags=re.S):
        out.append("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call)))
    return out


def _allocate_like_fake(qualname: str):
    """A CPU kernel for ``qualname`` returning the fake implementation's (uninitialized) outputs."""
    from torch._library.simple_registry import singleton

    fake = singleton.find(qualname).fake_impl.kernel.func
    return lambda *args: fake(*args)


def install(*, cpu_kernels: bool = False) -> torch.library.Library | None:
    """The library to keep alive while the ops are used (None when ``ptft_fast._C`` owns it, after
    checking that its schemas are binding.cpp's)."""
    from ptft_fast.ops import cuda_backend

    if cuda_backend._C is not None:  # the real library, wired by cuda_backend at import
        for schema in schemas():
            want = torch._C.parse_schema(f"ptft_fast::{schema}")
            op = getattr(torch.ops.ptft_fast, want.name.split("::")[1]).default
            assert str(op._schema) == str(want), f"loaded {op._schema} != binding.cpp {want}"
        return None
    lib = torch.library.Library("ptft_fast", "DEF")
    for schema in schemas():
        lib.define(schema)
    cuda_backend._register_library()
    if cpu_kernels:
        for schema in schemas():
            name = schema.split("(", 1)[0]
            lib.impl(name, _allocate_like_fake(f"ptft_fast::{name}"), "CPU")
    return lib
