"""Backend dispatch for ptft_fast ops.

Each op has one implementation per backend, registered once with :func:`register`. A call picks
one with :func:`resolve`, which is a couple of dict lookups: availability of every backend is
probed once per process (on first use), and the ``auto`` choice per (op, device type) is read
once from ``auto_backends.json`` (written from recorded benchmark results) and cached.

Backends:
  ``torch``  pure-PyTorch reference path (CPU and GPU; SDPA and native fused ops).
  ``triton`` Triton kernels from ``ptft_fast.kernels`` (CUDA; CPU only under TRITON_INTERPRET=1).
  ``cuda``   CUDA C++ kernels from the ``ptft_fast._C`` extension (CUDA only).
  ``auto``   CPU tensors → torch; CUDA tensors → the fastest available backend per op.

Selection order: the ``backend=`` argument of a call, else the innermost :func:`use_backend`
context, else the ``PTFT_BACKEND`` environment variable (read once at import), else ``auto``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

BACKENDS = ("torch", "triton", "cuda")
CHOICES = ("auto", *BACKENDS)

# op name -> backend name -> implementation
_REGISTRY: dict[str, dict[str, Callable]] = {}
# backend name -> (available, reason-if-not); filled lazily, once
_AVAILABLE: dict[str, tuple[bool, str]] = {}
# (op, device type) -> implementation chosen by "auto"
_AUTO_CACHE: dict[tuple[str, str], Callable] = {}
# (op, backend) -> implementation for explicit choices that passed the availability check
_EXPLICIT_CACHE: dict[tuple[str, str], Callable] = {}

_AUTO_TABLE_PATH = Path(__file__).with_name("auto_backends.json")
# Modules whose import registers the implementations of a backend.
_BACKEND_MODULES = {"triton": "ptft_fast.ops.triton_backend", "cuda": "ptft_fast.ops.cuda_backend"}


class BackendUnavailableError(RuntimeError):
    """A backend was requested that cannot run here; the message says what is missing."""


def _validate_choice(name: str, where: str) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"{where}: backend must be one of {CHOICES}, got {name!r}")
    return name.lower()


_ENV_BACKEND = _validate_choice(os.environ.get("PTFT_BACKEND", "auto") or "auto", "PTFT_BACKEND")
_CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("ptft_backend", default=_ENV_BACKEND)


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the implementation of ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"register: backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = fn
        _AUTO_CACHE.clear()
        _EXPLICIT_CACHE.clear()
        return fn

    return deco


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Context manager: ops called inside default to ``backend`` (``auto``/``torch``/``triton``/``cuda``)."""
    token = _CURRENT.set(_validate_choice(backend, "use_backend"))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_backend() -> str:
    """The backend name ops default to here (context manager, else PTFT_BACKEND, else auto)."""
    return _CURRENT.get()


def _probe(backend: str) -> tuple[bool, str]:
    if backend == "torch":
        return True, ""
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "the `triton` package is not installed (pip install triton)"
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            return False, (
                "Triton kernels need a CUDA GPU; none is visible (on CPU they run only under "
                "TRITON_INTERPRET=1, which is meant for tests)"
            )
    if backend == "cuda":
        try:
            importlib.import_module("ptft_fast._C")
        except ImportError as exc:
            return False, (
                f"the CUDA extension ptft_fast._C is not built ({exc}); install on a machine with "
                "a CUDA build of torch and nvcc: `pip install --no-build-isolation -e .` "
                "(PTFT_BUILD_CUDA=1 makes a failed build an error)"
            )
        if not torch.cuda.is_available():
            return False, "the CUDA backend needs a CUDA GPU; none is visible"
    try:
        importlib.import_module(_BACKEND_MODULES[backend])
    except ImportError as exc:
        return False, f"importing {_BACKEND_MODULES[backend]} failed: {exc}"
    return True, ""


def backend_available(backend: str) -> tuple[bool, str]:
    """(available, reason) for ``backend``; probed once per process."""
    if backend not in _AVAILABLE:
        _AVAILABLE[backend] = _probe(backend)
    return _AVAILABLE[backend]


def _auto_order(op: str, device_type: str) -> list[str]:
    if device_type != "cuda":
        return ["torch"]
    order: list[str] = []
    if _AUTO_TABLE_PATH.exists():
        table = json.loads(_AUTO_TABLE_PATH.read_text())
        order = list(table.get("cuda", {}).get(op, []))
    # Without recorded results, prefer compiled kernels over the reference.
    for name in ("triton", "cuda", "torch"):
        if name not in order:
            order.append(name)
    return order


def _resolve_auto(op: str, device_type: str) -> Callable:
    for name in _auto_order(op, device_type):
        if backend_available(name)[0] and name in _REGISTRY.get(op, {}):
            if name == "torch" and device_type == "cuda":
                warnings.warn(
                    f"ptft_fast: no compiled backend for {op} on CUDA; using the PyTorch reference.",
                    stacklevel=3,
                )
            return _REGISTRY[op][name]
    raise BackendUnavailableError(f"{op}: no backend available for {device_type} tensors")


def resolve(op: str, backend: str | None, ref: torch.Tensor) -> Callable:
    """The implementation of ``op`` for ``backend`` (None → current default) and the device of the
    op's tensor ``ref``. A couple of dict lookups once warm (it runs on every op call). Under
    torch.compile the choice is made once, when the graph is traced: a later ``use_backend``
    does not change a compiled model's backend."""
    device_type = "cpu" if ref.is_cpu else "cuda" if ref.is_cuda else ref.device.type
    if torch.compiler.is_compiling():
        return _REGISTRY[op][_traced_choice(op, backend, device_type)]
    return _lookup(op, backend, device_type)


@torch.compiler.assume_constant_result
def _traced_choice(op: str, backend: str | None, device_type: str) -> str:
    """The backend name :func:`resolve` picks, computed while torch.compile traces (it cannot trace
    a ContextVar or the first-call probes) and folded into the graph as a constant."""
    impl = _lookup(op, backend, device_type)
    return next(name for name, fn in _REGISTRY[op].items() if fn is impl)


def _lookup(op: str, backend: str | None, device_type: str) -> Callable:
    name = _CURRENT.get() if backend is None else backend
    if name == "auto":
        key = (op, device_type)
        impl = _AUTO_CACHE.get(key)
        if impl is None:
            impl = _AUTO_CACHE[key] = _resolve_auto(op, device_type)
        return impl
    impl = _EXPLICIT_CACHE.get((op, name))
    if impl is None:
        name = _validate_choice(name, op)
        ok, why = backend_available(name)
        if not ok:
            raise BackendUnavailableError(f"{op}: backend {name!r} is unavailable: {why}")
        impl = _REGISTRY.get(op, {}).get(name)
        if impl is None:
            have = sorted(_REGISTRY.get(op, {}))
            raise BackendUnavailableError(
                f"{op}: backend {name!r} has no implementation of this op (implemented: {have})"
            )
        _EXPLICIT_CACHE[(op, name)] = impl
    if (
        name != "torch"
        and device_type != "cuda"
        and not (name == "triton" and os.environ.get("TRITON_INTERPRET") == "1")
    ):
        raise BackendUnavailableError(
            f"{op}: backend {name!r} runs on CUDA tensors, got tensors on {device_type}; "
            "use backend='torch' or 'auto' for CPU tensors"
        )
    return impl


def registered() -> dict[str, list[str]]:
    """op name -> backends with an implementation registered so far."""
    return {op: sorted(impls) for op, impls in _REGISTRY.items()}
