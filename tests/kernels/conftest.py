"""Kernel tests import the shared tolerance rule (``kernel_tolerance``) from this folder; with
``--import-mode=importlib`` test folders are not on sys.path, so put this one there."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
