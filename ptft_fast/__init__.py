"""ptft_fast — kernel-backed runtime for the pre-train → fine-tune paradigm of NLP."""

from ptft_fast import _source_tree

_source_tree.install()  # before anything imports ptft_fast.kernels

from ptft_fast import ops  # noqa: E402
from ptft_fast.ops import use_backend  # noqa: E402

__version__ = "0.1.0"

__all__ = ["__version__", "ops", "patch", "unpatch", "use_backend"]


def __getattr__(name: str):
    # `ptft_fast.patch` / `unpatch` are imported on first use: they need ptft_fast.hf (and, when
    # called, transformers).
    if name in ("patch", "unpatch"):
        from ptft_fast.hf import patch as patching

        return getattr(patching, name)
    raise AttributeError(f"module 'ptft_fast' has no attribute {name!r}")
