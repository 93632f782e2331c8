"""Small helpers shared by the Triton launchers (no kernels here)."""

from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def require_package_name(module_name: str) -> None:
    """Refuses a kernel module imported under any name but ``ptft_fast.kernels.<module>``: through
    the repo root on ``sys.path`` it could otherwise load as ``kernels.<module>``, a second copy
    under the name Hugging Face's ``kernels`` distribution owns (see kernels/README.md)."""
    if not module_name.startswith("ptft_fast.kernels."):
        raise ImportError(
            f"{module_name!r} is ptft_fast's Triton kernel folder imported by the wrong name; "
            f"import ptft_fast.kernels.{module_name.rpartition('.')[2]} instead"
        )


require_package_name(__name__)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1): Triton block sizes must be powers of two."""
    return triton.next_power_of_2(max(1, int(n)))


def draw_seed() -> int:
    """A Philox seed from torch's default CPU generator (so ``torch.manual_seed`` makes kernels
    reproducible); reading it is a host op on a CPU tensor, never a GPU sync."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def num_programs_cap(device: torch.device) -> int:
    """How many persistent programs to launch for grid-stride kernels: a few per SM on GPU, a
    handful under the interpreter (each program is a Python loop there)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def contiguous(*tensors):
    """Each tensor made contiguous (None stays None): the kernels index rows as dense memory."""
    return tuple(None if t is None else t.contiguous() for t in tensors)
