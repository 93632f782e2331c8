"""The triton backend's ops are torch.library custom ops: torch.compile keeps them as opaque
nodes (fake implementations give the shapes) and the compiled forward and backward match eager."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.ops import attention, layer_norm, linear_cross_entropy, lora_linear
from ptft_fast.ops.relative_bias import RelativePositionBias

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _blocks(q, k, v, table, x, res, w, emb, a, b):
    rel = RelativePositionBias(table, bidirectional=True, num_buckets=8, max_distance=16)
    att = attention(q, k, v, attn_bias=rel, causal=True, backend="triton")
    y, h = layer_norm(x, w, residual=res, return_residual=True, backend="triton")
    lo = lora_linear(x, emb[:, :24], None, a, b, 2.0, backend="triton")
    return att.square().sum() + y.sum() + h.mean() + lo.sum()


def _model(q, k, v, table, x, res, w, hid, emb, labels, a, b):
    # linear_cross_entropy's label range check reads the labels on CPU: a graph break there
    ce = linear_cross_entropy(hid, emb, labels, backend="triton")
    return _blocks(q, k, v, table, x, res, w, emb, a, b) + ce


def test_compile_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEV).requires_grad_()

    labels = torch.tensor([3, -100, 5, 0, -100, 7, 1], device=DEV)
    args = (r(1, 9, 2, 16), r(1, 9, 2, 16), r(1, 9, 2, 16), r(8, 2), r(7, 24), r(7, 24), r(24), r(7, 24),
            r(11, 24), labels, r(4, 24), r(11, 4))  # fmt: skip
    diff = [t for t in args if t.requires_grad]
    eager = _model(*args)
    eager_grads = torch.autograd.grad(eager, diff)
    compiled = torch.compile(_model, backend="aot_eager")
    out = compiled(*args)
    grads = torch.autograd.grad(out, diff)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # without the cross-entropy the whole model is one graph (the ops are opaque custom ops)
    block_args = (*args[:7], args[8], *args[10:])
    full = torch.compile(_blocks, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(full(*block_args), _blocks(*block_args), rtol=1e-5, atol=1e-5)
