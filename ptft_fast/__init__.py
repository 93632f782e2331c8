"""ptft_fast — kernel-backed runtime for the pre-train → fine-tune paradigm of NLP."""

from ptft_fast import ops
from ptft_fast.hf.patch import patch  # imports transformers only when called
from ptft_fast.ops import use_backend

__version__ = "0.1.0"

__all__ = ["__version__", "ops", "patch", "use_backend"]
