"""Puts this folder on sys.path for its helper module ``hf_tiny`` (``--import-mode=importlib``
leaves test folders off it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
