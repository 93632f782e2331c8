"""Resolves ``ptft_fast.kernels`` to the repo-root ``kernels/`` folder in a source checkout.

The Triton kernels live in ``kernels/`` at the top of the repository, a folder with no
``__init__.py``: a regular package there would be found first whenever the repo root is on
``sys.path`` (``python -m ...`` or ``python -m pytest`` started there) and would shadow Hugging
Face's ``kernels`` distribution, which transformers and peft import. As a namespace portion it
always loses to an installed regular package of the same name.

How ``ptft_fast.kernels`` is found:

- wheel install: the folder is copied to ``ptft_fast/kernels/`` (``package_dir`` in setup.py) and
  the normal path finder finds it there;
- editable install, or ``ptft_fast/`` imported from the repo root: setuptools records the mapping,
  but its editable finder only resolves mapped folders that hold an ``__init__.py``. The finder
  below fills that gap for this one name, after every other finder has had its turn.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
MAPPED_NAMESPACES = {"ptft_fast.kernels": "kernels"}


class SourceTreeFinder(MetaPathFinder):
    """Finds the mapped namespace sub-packages of ptft_fast in the source tree (see module doc)."""

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        folder = MAPPED_NAMESPACES.get(fullname)
        if folder is None or not (SOURCE_ROOT / folder).is_dir():
            return None
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(SOURCE_ROOT / folder)]
        return spec


def install() -> None:
    """Appends the finder to ``sys.meta_path`` once (a wheel install never needs it: the normal
    path finder answers first)."""
    if not any(isinstance(finder, SourceTreeFinder) for finder in sys.meta_path):
        sys.meta_path.append(SourceTreeFinder())
