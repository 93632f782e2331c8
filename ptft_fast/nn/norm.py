"""LayerNorm and RMSNorm modules: ``torch.nn`` compatible, computed by ``ops.layer_norm``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ptft_fast import ops


def _flatten_normalized(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, ndim: int):
    """A norm over the last ``ndim`` dims equals one over them flattened: (..., *S) → (..., prod(S))."""
    if ndim == 1:
        return x, w, b
    flat = math.prod(x.shape[x.dim() - ndim :])
    x = x.reshape(*x.shape[: x.dim() - ndim], flat)
    return x, None if w is None else w.reshape(flat), None if b is None else b.reshape(flat)


def _check_input(module: nn.Module, x: torch.Tensor) -> None:
    shape = tuple(module.normalized_shape)
    if tuple(x.shape[x.dim() - len(shape) :]) != shape or x.dim() < len(shape):
        raise ValueError(
            f"{type(module).__name__}: input must end with normalized_shape {shape}, got {tuple(x.shape)}"
        )


def _normalize(module, input, residual, return_residual, dropout_p, *, bias, eps: float, rms: bool):
    """Shared forward of LayerNorm/RMSNorm: norm(dropout(input) + residual) over normalized_shape
    (dropout in training mode only)."""
    _check_input(module, input)
    x, w, b = _flatten_normalized(input, module.weight, bias, len(module.normalized_shape))
    res = None if residual is None else residual.reshape(x.shape)
    out = ops.layer_norm(
        x, w, b, eps, residual=res, rms=rms, dropout_p=dropout_p if module.training else 0.0,
        return_residual=return_residual, backend=module.backend,
    )  # fmt: skip
    if return_residual:
        y, h = out
        return y.reshape(input.shape), h.reshape(input.shape)
    return out.reshape(input.shape)


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` computed by ``ptft_fast.ops.layer_norm``.

    Same constructor (normalized_shape, eps, elementwise_affine, bias, device, dtype), parameters
    (``weight``, ``bias``: normalized_shape) and state dict as ``torch.nn.LayerNorm``, so either
    loads the other's weights. Optionally fuses the residual add of pre/post-norm blocks.

    Args:
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default).
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
        self.backend = backend

    @classmethod
    def from_torch(cls, module: nn.LayerNorm, *, backend: str | None = None) -> LayerNorm:
        """A LayerNorm sharing ``module``'s parameters (no copy)."""
        new = cls(
            module.normalized_shape,
            module.eps,
            module.elementwise_affine,
            bias=module.bias is not None,
            device="meta",
            backend=backend,
        )
        new.weight, new.bias = module.weight, module.bias  # share, do not copy
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.backend is None else f", backend={self.backend!r}")

    def forward(
        self,
        input: torch.Tensor,
        residual: torch.Tensor | None = None,
        return_residual: bool = False,
        dropout_p: float = 0.0,
    ):
        """input, residual: (..., *normalized_shape). Returns norm(dropout(input) + residual) like
        input, and with ``return_residual`` also the sum h = dropout(input) + residual; the dropout
        (``dropout_p``, fused into the kernel) applies in training mode only."""
        return _normalize(
            self, input, residual, return_residual, dropout_p, bias=self.bias, eps=self.eps, rms=False
        )


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` computed by ``ptft_fast.ops.layer_norm(..., rms=True)``.

    Same constructor (normalized_shape, eps, elementwise_affine, device, dtype), ``weight``
    parameter and state dict as ``torch.nn.RMSNorm``; ``eps=None`` means
    ``torch.finfo(input.dtype).eps``, as there. Also takes the T5 ``T5LayerNorm`` weights as they are.

    Args:
        backend: "auto" | "torch" | "triton" | "cuda" | None (→ the current default).
    """

    def __init__(
        self,
        normalized_shape,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, device=device, dtype=dtype)
        self.backend = backend

    @classmethod
    def from_weight(cls, weight: nn.Parameter, eps: float | None, *, backend: str | None = None) -> RMSNorm:
        """An RMSNorm over weight.shape that shares ``weight`` (no copy)."""
        new = cls(tuple(weight.shape), eps, device="meta", backend=backend)
        new.weight = weight  # share, do not copy
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.backend is None else f", backend={self.backend!r}")

    def forward(
        self,
        input: torch.Tensor,
        residual: torch.Tensor | None = None,
        return_residual: bool = False,
        dropout_p: float = 0.0,
    ):
        """input, residual: (..., *normalized_shape). Returns rms_norm(dropout(input) + residual)
        like input, and with ``return_residual`` also the sum h = dropout(input) + residual; the
        dropout (``dropout_p``, fused into the kernel) applies in training mode only."""
        eps = torch.finfo(input.dtype).eps if self.eps is None else self.eps
        return _normalize(self, input, residual, return_residual, dropout_p, bias=None, eps=eps, rms=True)
