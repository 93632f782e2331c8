"""Input checks shared by the public ops.

Every failure raises ``ValueError`` (bad value/shape) or ``TypeError`` (bad type/dtype) whose
message names the op, the argument, the rule and the actual value — never a crash deep inside a
kernel or a silently wrong result.
"""

from __future__ import annotations

import itertools
import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def tensor(op: str, name: str, t, *, ndim: int | tuple[int, ...] | None = None, floating: bool = True):
    """``t`` is a tensor (of a floating dtype unless ``floating=False``) with ``ndim`` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must have a floating dtype {FLOAT_DTYPES}, got {t.dtype}")
    if ndim is not None:
        dims = t.dim()
        if dims != ndim if isinstance(ndim, int) else dims not in ndim:
            allowed = (ndim,) if isinstance(ndim, int) else ndim
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{op}: {name} must have {want} dims, got shape {tuple(t.shape)}")
    return t


def optional_tensor(op: str, name: str, t, **kw):
    return None if t is None else tensor(op, name, t, **kw)


def not_empty(op: str, name: str, t: torch.Tensor) -> None:
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} must not be empty, got shape {tuple(t.shape)}")


def size(op: str, name: str, t: torch.Tensor, dim: int, expected: int, rule: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(
            f"{op}: {name}.shape[{dim}] must equal {rule} = {expected}, got shape {tuple(t.shape)}"
        )


def shape(op: str, name: str, t: torch.Tensor, expected: tuple[int, ...], rule: str) -> None:
    if t.shape != expected:  # torch.Size is a tuple
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)} ({rule}), got {tuple(t.shape)}")


def device_type(t: torch.Tensor) -> str:
    """``t.device.type``, without building the device object for CPU and CUDA tensors (~0.4 µs)."""
    return "cpu" if t.is_cpu else "cuda" if t.is_cuda else t.device.type


def autocast_inputs(device: torch.device | str, *tensors):
    """``tensors`` cast as ``torch.autocast`` casts a matmul's inputs: when autocast is on for
    ``device``'s type, every fp32/fp16/bf16 tensor goes to the autocast dtype (float64 and None
    pass, autocast's own rule); otherwise they come back unchanged. The casts are differentiable,
    so fp32 parameters receive fp32 gradients. Our ops are plain Python functions over custom
    kernels, which autocast does not see: the matmul-like ops (attention, lora_linear,
    linear_cross_entropy) call this first. ``device``: a device or its type."""
    kind = device if isinstance(device, str) else device.type
    if not torch.is_autocast_enabled(kind):
        return tensors
    dtype = torch.get_autocast_dtype(kind)
    return tuple(
        t.to(dtype)
        if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16, torch.bfloat16)
        else t
        for t in tensors
    )


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    device = ref.device
    for name, t in others.items():
        if t is not None and t.device != device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {ref_name} is on {device}; move both to one device"
            )


HALF_DTYPES = (torch.float16, torch.bfloat16)


def dtypes(op: str, main_name: str, main: torch.Tensor, *, operands: dict, params: dict) -> None:
    """The dtype contract shared by every op (docs/op_contracts.md), checked after autocast casts.

    The op computes in ``main``'s dtype (x, q, hidden). ``operands`` (the tensors a matmul takes
    with it) must have exactly that dtype. ``params`` (norm weights and biases, the residual,
    additive biases) may have it, or float32 when ``main`` is float16/bfloat16: fp32 master
    parameters and an fp32 residual stream next to half-precision activations. Anything else is a
    TypeError naming the argument and both dtypes.
    """
    for name, t in operands.items():
        if t is not None and t.dtype != main.dtype:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype} but {main_name} has {main.dtype}; "
                f"{name} must have {main_name}'s dtype"
            )
    wider = main.dtype in HALF_DTYPES
    for name, t in params.items():
        if t is not None and t.dtype != main.dtype and not (wider and t.dtype == torch.float32):
            allowed = f"{main.dtype} or torch.float32" if wider else str(main.dtype)
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype} but {main_name} has {main.dtype}; it must be {allowed}"
            )


def probability(op: str, name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{op}: {name} must be a float in [0, 1), got {type(p).__name__}")
    if math.isnan(p) or not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: {name} must be in [0, 1), got {p}")
    return float(p)


def positive(op: str, name: str, v, *, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{op}: {name} must be a number, got {type(v).__name__}")
    bad = math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not allow_zero)
    if bad:
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{op}: {name} must be finite and {rule}, got {v}")
    return float(v)


def choice(op: str, name: str, v, options: tuple) -> None:
    if v not in options:
        raise ValueError(f"{op}: {name} must be one of {options}, got {v!r}")


def cu_seqlens(op: str, name: str, cu: torch.Tensor, total: int, ref: torch.Tensor) -> int:
    """``cu`` is an int32/int64 1-D tensor starting at 0, non-decreasing, ending at ``total``.

    Returns the number of sequences. CPU values are checked on the host (ValueError); device
    values with an asynchronous device assert, so the check never synchronizes.
    """
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: {name} must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(
            f"{op}: {name} must be 1-D with at least 2 entries (batch + 1), got shape {tuple(cu.shape)}"
        )
    same_device(op, "q", ref, **{name: cu})
    if cu.device.type != "cpu":
        # Reading values would synchronize with the device: check them asynchronously instead.
        ok = (cu[0] == 0) & (cu[-1] == total) & (cu[1:] >= cu[:-1]).all()
        torch._assert_async(ok, f"{op}: {name} must start at 0, be non-decreasing and end at {total}")
        return cu.numel() - 1
    host = cu.tolist()
    if host[0] != 0:
        raise ValueError(f"{op}: {name}[0] must be 0, got {host[0]}")
    if any(b < a for a, b in itertools.pairwise(host)):
        raise ValueError(f"{op}: {name} must be non-decreasing, got {host}")
    if host[-1] != total:
        raise ValueError(f"{op}: {name}[-1] must equal the number of tokens {total}, got {host[-1]}")
    return len(host) - 1
