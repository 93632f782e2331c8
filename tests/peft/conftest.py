"""Puts tests/hf on sys.path for its tiny-model helper ``hf_tiny`` (``--import-mode=importlib``
leaves test folders off it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hf"))
