"""AttentionArgs: the one bundle of attention options from the public op to every backend."""

import dataclasses

import pytest
import torch

from ptft_fast.ops import attention, dispatch
from ptft_fast.ops.attention_args import AttentionArgs
from ptft_fast.ops.reference import attention_ref


@pytest.fixture
def captured(monkeypatch):
    """The torch backend replaced by a spy that records what the public op hands it."""
    seen = []

    def spy(q, k, v, args):
        seen.append(args)
        return torch.zeros_like(q)

    monkeypatch.setitem(dispatch._REGISTRY["attention"], "torch", spy)
    monkeypatch.setattr(dispatch, "_AUTO_CACHE", {})
    monkeypatch.setattr(dispatch, "_EXPLICIT_CACHE", {})
    return seen


def test_public_op_hands_the_backend_one_checked_bundle(captured):
    q = torch.randn(7, 2, 8)
    cu = torch.tensor([0, 3, 7])
    prefix = torch.tensor([1, 2])
    attention(q, q, q, causal=1, cu_seqlens_q=cu, cu_seqlens_k=cu, softmax_scale=1, prefix_lengths=prefix)
    (args,) = captured
    assert isinstance(args, AttentionArgs) and args.varlen
    assert args.causal is True and isinstance(args.softmax_scale, float) and args.softmax_scale == 1.0
    assert (args.max_seqlen_q, args.max_seqlen_k) == (4, 4)  # derived from cu_seqlens by the op
    assert args.prefix_lengths is prefix and args.cu_seqlens_q is cu and args.dropout_p == 0.0
    assert args.batch_and_lengths(q, q) == (2, 4, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.causal = False


def test_padded_lengths_and_default_scale():
    q, k = torch.randn(2, 3, 4, 16), torch.randn(2, 5, 4, 16)
    args = AttentionArgs()
    assert not args.varlen and args.batch_and_lengths(q, k) == (2, 3, 5)
    assert args.scale(16) == 0.25 and AttentionArgs(softmax_scale=0.5).scale(16) == 0.5


def test_reference_takes_the_bundle_or_its_fields_not_both():
    q, k, v = (torch.randn(1, 4, 2, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    by_bundle = attention_ref(q, k, v, AttentionArgs(causal=True, attn_bias=bias))
    by_keywords = attention_ref(q, k, v, causal=True, attn_bias=bias)
    assert torch.equal(by_bundle, by_keywords)
    assert not torch.allclose(by_bundle, attention_ref(q, k, v, attn_bias=bias))  # causal was applied
    with pytest.raises(TypeError, match="not both"):
        attention_ref(q, k, v, AttentionArgs(), causal=True)
    with pytest.raises(TypeError, match="casual"):
        attention_ref(q, k, v, casual=True)
