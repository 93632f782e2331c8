"""Backward results in an op's schema order, built from the names of its inputs."""

from __future__ import annotations

import torch


def input_names(qualname: str) -> tuple[str, ...]:
    """The argument names of the registered op ``"namespace::name"``, in schema order."""
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default
    return tuple(arg.name for arg in op._schema.arguments)


class SchemaGrads:
    """The gradients of one op's inputs by name, for its ``torch.library.register_autograd``.

    ``grads = SchemaGrads("ptft_fast::attention_fwd")`` reads the schema once (call it after the
    op is declared); ``grads(q=dq, k=dk, attn_bias=None)`` is the tuple the backward returns: one
    entry per schema input, each gradient at its input's position and None elsewhere;
    ``grads.needed(ctx, "attn_bias")`` is ``ctx.needs_input_grad`` at that input. A name the
    schema does not have raises a TypeError.
    """

    def __init__(self, qualname: str):
        self.qualname = qualname
        self.names = input_names(qualname)
        self.position = {name: i for i, name in enumerate(self.names)}

    def _at(self, name: str) -> int:
        try:
            return self.position[name]
        except KeyError:
            raise TypeError(f"{self.qualname} has no input {name!r}; its inputs are {self.names}") from None

    def __call__(self, **by_name) -> tuple:
        out = [None] * len(self.names)
        for name, grad in by_name.items():
            out[self._at(name)] = grad
        return tuple(out)

    def needed(self, ctx, name: str) -> bool:
        """Whether autograd asks for the gradient of input ``name``."""
        return bool(ctx.needs_input_grad[self._at(name)])
