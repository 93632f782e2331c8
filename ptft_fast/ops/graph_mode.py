"""Graph mode: code being traced by ``torch.compile`` or captured into a CUDA graph.

There shapes must not depend on data and nothing may read a device value on the host, so the
ops and models take their data-independent paths: the same results, without the shortcuts that
need a host read (dropping unmasked rows with ``nonzero``, skipping an all-true attention mask,
running the last encoder layer on the labeled tokens only). ``torch.compile`` turns graph mode on
while it traces; :func:`static_shapes` turns it on for eager code (the warm-up and capture of a
CUDA graph, which must take the same path, and CPU tests of the graph path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_STATIC = False  # read by in_graph(); a module global, so torch.compile guards on it


def in_graph() -> bool:
    """True while torch.compile traces, or inside :func:`static_shapes`."""
    return _STATIC or torch.compiler.is_compiling()


@contextlib.contextmanager
def static_shapes() -> Iterator[None]:
    """Run ops and models on their data-independent paths (see the module docstring)."""
    global _STATIC
    before, _STATIC = _STATIC, True
    try:
        yield
    finally:
        _STATIC = before
