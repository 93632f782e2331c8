"""Small helpers shared by the Triton launchers (no kernels here).

Launchers never ask torch about the GPU directly: they ask :func:`gpu_target` for the device they
launch on (SM count, shared memory per block, architecture; None under the interpreter) and start
every kernel through :func:`launch`. The kernel report card (``ptft bench card``) uses both hooks:
inside :func:`recording_launches` the launchers run on ``meta`` tensors as if on the card's GPU
target, and every launch is recorded — kernel, arguments, launch options — instead of run, so the
card compiles exactly what a real launch at that shape would compile.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class GpuTarget:
    """What a launcher needs to know about the GPU it launches on.

    arch: compute capability as an int (90 = sm_90). sm_count: streaming multiprocessors.
    smem_per_block: the most shared memory one program may use (bytes, opt-in maximum).
    """

    arch: int
    sm_count: int
    smem_per_block: int


H100 = GpuTarget(arch=90, sm_count=132, smem_per_block=232448)
A100 = GpuTarget(arch=80, sm_count=108, smem_per_block=166912)


@dataclass
class _Recording:
    target: GpuTarget
    launches: list = field(default_factory=list)


_RECORDING: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar("ptft_recording", default=None)


def gpu_target(device: torch.device) -> GpuTarget | None:
    """The GPU a launch on ``device`` runs on; None for the interpreter (CPU tensors under
    TRITON_INTERPRET=1), where launchers pick small tiles that keep the Python loops short."""
    recording = _RECORDING.get()
    if recording is not None and device.type == "meta":
        return recording.target
    if device.type != "cuda" or INTERPRET:
        return None
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", None) or 48 * 1024
    return GpuTarget(props.major * 10 + props.minor, props.multi_processor_count, smem)


@dataclass(frozen=True)
class Launch:
    """One recorded launch: ``kernel`` (a JITFunction or an Autotuner over one), its grid (a tuple
    or a function of the chosen meta-parameters) and keyword arguments (tensors, scalars,
    constexprs and launch options)."""

    kernel: object
    grid: object
    kwargs: dict


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, or recorded as a :class:`Launch` (positional arguments
    named after the kernel's parameters) inside :func:`recording_launches`."""
    recording = _RECORDING.get()
    if recording is not None:
        named = dict(zip(kernel.arg_names, args, strict=False))
        recording.launches.append(Launch(kernel, grid, {**named, **kwargs}))
        return
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def recording_launches(target: GpuTarget):
    """Within the block, launchers called with ``meta`` tensors plan for ``target`` and record
    their launches (the yielded list) instead of running them."""
    recording = _Recording(target)
    token = _RECORDING.set(recording)
    try:
        yield recording.launches
    finally:
        _RECORDING.reset(token)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1): Triton block sizes must be powers of two."""
    return triton.next_power_of_2(max(1, int(n)))


def draw_seed() -> int:
    """A Philox seed from torch's default CPU generator (so ``torch.manual_seed`` makes kernels
    reproducible); reading it is a host op on a CPU tensor, never a GPU sync."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def contiguous(*tensors):
    """Each tensor made contiguous (None stays None): the kernels index rows as dense memory."""
    return tuple(None if t is None else t.contiguous() for t in tensors)
