"""Provider factories shared by the per-op kernel benchmarks (bench_attention, bench_layer_norm,
bench_cross_entropy, bench_lora): every ptft backend, torch.compile of a composition, and
optional peers (flash-attn, Liger-Kernel) that raise ``Unavailable`` when not importable.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

from ptft_fast.benchmarks.harness import Unavailable
from ptft_fast.ops.dispatch import BACKENDS, BackendUnavailableError, backend_available


def fwd_bwd(fn: Callable[[], object], inputs) -> Callable[[], object]:
    """A callable running fn() and the gradients of its (first) output's sum w.r.t. inputs."""

    def step():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out.float().sum(), inputs)

    return step


def ptft(
    call: Callable[[str], Callable[[], object]], device: torch.device, *, interpret: bool = False
) -> dict:
    """One provider per ptft backend; ``call(backend)`` returns the callable to time.

    Compiled backends are timed on CUDA only (on CPU Triton runs only interpreted, for tests), except
    that ``interpret`` lets the triton backend run on CPU under ``TRITON_INTERPRET=1`` (the CPU
    rehearsal of run_gpu.sh, at tiny shapes). A compiled backend that rejects the case's inputs
    (e.g. the cuda backend's attention takes fp16 and bf16 only) raises ``TypeError``: that provider
    is Unavailable for the case, not a failure.
    """
    interpreted = interpret and os.environ.get("TRITON_INTERPRET") == "1"

    def factory(name):
        def make():
            if name != "torch" and device.type != "cuda" and not (name == "triton" and interpreted):
                raise Unavailable(f"the {name} backend runs on CUDA tensors only")
            ok, why = backend_available(name)
            if not ok:
                raise Unavailable(why)
            fn = call(name)
            # compiled backends: only a rejection of the inputs is Unavailable; a crash stays a failure
            return fn if name == "torch" else run_once(fn, (TypeError, BackendUnavailableError))

        return make

    return {f"ptft-{name}": factory(name) for name in BACKENDS}


def compiled(fn: Callable, device: torch.device) -> Callable:
    """torch.compile(fn); only benchmarked on CUDA (on CPU compile time dwarfs the op)."""
    if device.type != "cuda":
        raise Unavailable("torch.compile is only benchmarked on CUDA")
    return torch.compile(fn, dynamic=False)


def optional(module: str, what: str):
    """Import ``module`` or raise Unavailable naming the pip package ``what``."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # peers fail to import in many ways (missing CUDA, ABI)
        raise Unavailable(f"{what} is not importable here ({type(exc).__name__}: {exc})") from None


def require_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise Unavailable(f"{what} needs a CUDA device")


def checked(make: Callable[[], Callable[[], object]]) -> Callable[[], Callable[[], object]]:
    """Factory wrapper: run the provider once up front; a RuntimeError or TypeError (no kernel for this
    device/dtype/shape, e.g. SDPA's cuDNN backend on CPU) becomes an Unavailable row."""

    return lambda: run_once(make(), (RuntimeError, TypeError))


def run_once(fn: Callable[[], object], unavailable: tuple[type[Exception], ...]) -> Callable[[], object]:
    """Run ``fn`` once up front and return it; an exception of the ``unavailable`` types becomes
    ``Unavailable`` (the provider cannot run this case here)."""
    try:
        fn()
    except unavailable as exc:
        raise Unavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
    return fn
