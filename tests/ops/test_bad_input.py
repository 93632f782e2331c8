"""Every public op rejects bad input with ValueError/TypeError naming the argument and the value."""

import pytest
import torch

from ptft_fast import ops

F32 = torch.float32


def _attn(**over):
    args = dict(q=torch.randn(2, 5, 4, 8), k=torch.randn(2, 5, 2, 8), v=torch.randn(2, 5, 2, 8))
    args.update(over)
    return lambda: ops.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def _varlen(**over):
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    args = dict(
        q=torch.randn(7, 4, 8),
        k=torch.randn(7, 4, 8),
        v=torch.randn(7, 4, 8),
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
    )
    args.update(over)
    return lambda: ops.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def _linear_cross_entropy(**over):
    args = dict(hidden=torch.randn(6, 8), weight=torch.randn(11, 8), labels=torch.randint(0, 11, (6,)))
    args.update(over)
    return lambda: ops.linear_cross_entropy(
        args.pop("hidden"), args.pop("weight"), args.pop("labels"), **args
    )


def _ln(**over):
    args = dict(x=torch.randn(3, 8), weight=torch.randn(8), bias=torch.randn(8))
    args.update(over)
    return lambda: ops.layer_norm(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


def _lora(**over):
    args = dict(
        x=torch.randn(3, 8), weight=torch.randn(5, 8), bias=None, lora_a=torch.randn(2, 8),
        lora_b=torch.randn(5, 2), scaling=2.0,
    )  # fmt: skip
    args.update(over)
    positional = [args.pop(k) for k in ("x", "weight", "bias", "lora_a", "lora_b", "scaling")]
    return lambda: ops.lora_linear(*positional, **args)


CASES = [
    # (id, call, exception, words that must appear in the message)
    ("ln-x-not-tensor", _ln(x=[[1.0]]), TypeError, ["x", "torch.Tensor", "list"]),
    ("ln-int-dtype", _ln(x=torch.ones(3, 8, dtype=torch.int64)), TypeError, ["x", "int64"]),
    ("ln-weight-shape", _ln(weight=torch.randn(7)), ValueError, ["weight", "(7,)", "(8,)"]),
    ("ln-bias-rank", _ln(bias=torch.randn(8, 1)), ValueError, ["bias", "(8, 1)"]),
    ("ln-residual-shape", _ln(residual=torch.randn(4, 8)), ValueError, ["residual", "(4, 8)", "(3, 8)"]),
    ("ln-negative-eps", _ln(eps=-1e-5), ValueError, ["eps", "-1e-05"]),
    ("ln-nan-eps", _ln(eps=float("nan")), ValueError, ["eps", "nan"]),
    ("ln-dropout-1", _ln(dropout_p=1.0), ValueError, ["dropout_p", "1.0"]),
    ("ln-dropout-negative", _ln(dropout_p=-0.1), ValueError, ["dropout_p", "-0.1"]),
    ("ln-empty", _ln(x=torch.randn(0, 8)), ValueError, ["x", "empty", "(0, 8)"]),
    ("attn-rank", _attn(q=torch.randn(5, 4, 8)), ValueError, ["q", "(B, T, H, D)", "(5, 4, 8)"]),
    ("attn-gqa", _attn(k=torch.randn(2, 5, 3, 8), v=torch.randn(2, 5, 3, 8)), ValueError, ["Hq", "Hkv=3"]),
    (
        "attn-head-dim",
        _attn(k=torch.randn(2, 5, 2, 6), v=torch.randn(2, 5, 2, 6)),
        ValueError,
        ["head dim", "8", "6"],
    ),
    ("attn-kv-shape", _attn(v=torch.randn(2, 6, 2, 8)), ValueError, ["k and v", "(2, 6, 2, 8)"]),
    (
        "attn-dtype",
        _attn(k=torch.randn(2, 5, 2, 8, dtype=torch.float64)),
        TypeError,
        ["k", "float64", "float32"],
    ),
    (
        "attn-batch",
        _attn(k=torch.randn(3, 5, 2, 8), v=torch.randn(3, 5, 2, 8)),
        ValueError,
        ["batch", "2", "3"],
    ),
    ("attn-mask-dtype", _attn(key_padding_mask=torch.ones(2, 5)), TypeError, ["key_padding_mask", "bool"]),
    (
        "attn-mask-shape",
        _attn(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)),
        ValueError,
        ["key_padding_mask", "(2, 4)"],
    ),
    ("attn-bias-shape", _attn(attn_bias=torch.randn(2, 3, 5, 5)), ValueError, ["attn_bias", "(2, 3, 5, 5)"]),
    ("attn-dropout-nan", _attn(dropout_p=float("nan")), ValueError, ["dropout_p", "nan"]),
    ("attn-scale", _attn(softmax_scale=0.0), ValueError, ["softmax_scale", "0.0"]),
    (
        "attn-prefix-not-causal",
        _attn(prefix_lengths=torch.tensor([1, 2])),
        ValueError,
        ["prefix_lengths", "causal"],
    ),
    (
        "attn-prefix-shape",
        _attn(causal=True, prefix_lengths=torch.tensor([1, 2, 3])),
        ValueError,
        ["prefix_lengths", "(3,)", "(2,)"],
    ),
    (
        "attn-prefix-float",
        _attn(causal=True, prefix_lengths=torch.tensor([1.0, 2.0])),
        TypeError,
        ["prefix_lengths", "float32"],
    ),
    (
        "varlen-decreasing",
        _varlen(cu_seqlens_q=torch.tensor([0, 5, 3, 7], dtype=torch.int32)),
        ValueError,
        ["cu_seqlens_q", "non-decreasing"],
    ),
    (
        "varlen-last",
        _varlen(cu_seqlens_k=torch.tensor([0, 3, 6], dtype=torch.int32)),
        ValueError,
        ["cu_seqlens_k[-1]", "7", "6"],
    ),
    (
        "varlen-first",
        _varlen(cu_seqlens_q=torch.tensor([1, 3, 7], dtype=torch.int32)),
        ValueError,
        ["cu_seqlens_q[0]", "1"],
    ),
    (
        "varlen-float",
        _varlen(cu_seqlens_q=torch.tensor([0.0, 3.0, 7.0])),
        TypeError,
        ["cu_seqlens_q", "int32"],
    ),
    ("varlen-one-side", _varlen(cu_seqlens_k=None), ValueError, ["cu_seqlens_q", "cu_seqlens_k"]),
    ("varlen-max-small", _varlen(max_seqlen_q=2), ValueError, ["max_seqlen_q=2", "4"]),
    (
        "varlen-with-mask",
        _varlen(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)),
        ValueError,
        ["key_padding_mask", "varlen"],
    ),
    (
        "linear_cross_entropy-label-high",
        _linear_cross_entropy(labels=torch.tensor([0, 1, 11, 2, 3, 4])),
        ValueError,
        ["labels", "[0, 11)", "11"],
    ),
    (
        "linear_cross_entropy-label-negative",
        _linear_cross_entropy(labels=torch.tensor([0, -5, 1, 2, 3, 4])),
        ValueError,
        ["labels", "-5"],
    ),
    (
        "linear_cross_entropy-hidden-size",
        _linear_cross_entropy(weight=torch.randn(11, 7)),
        ValueError,
        ["weight", "H", "(11, 7)"],
    ),
    (
        "linear_cross_entropy-labels-shape",
        _linear_cross_entropy(labels=torch.randint(0, 11, (5,))),
        ValueError,
        ["hidden", "labels", "(5,)"],
    ),
    (
        "linear_cross_entropy-labels-float",
        _linear_cross_entropy(labels=torch.zeros(6)),
        TypeError,
        ["labels", "float32"],
    ),
    (
        "linear_cross_entropy-bias-shape",
        _linear_cross_entropy(bias=torch.randn(10)),
        ValueError,
        ["bias", "(10,)", "(11,)"],
    ),
    (
        "linear_cross_entropy-reduction",
        _linear_cross_entropy(reduction="avg"),
        ValueError,
        ["reduction", "'avg'"],
    ),
    (
        "linear_cross_entropy-smoothing",
        _linear_cross_entropy(label_smoothing=1.5),
        ValueError,
        ["label_smoothing", "1.5"],
    ),
    ("linear_cross_entropy-zloss", _linear_cross_entropy(z_loss=-1.0), ValueError, ["z_loss", "-1.0"]),
    (
        "linear_cross_entropy-dtype-mismatch",
        _linear_cross_entropy(weight=torch.randn(11, 8, dtype=torch.float64)),
        TypeError,
        ["weight", "float64"],
    ),
    (
        "linear_cross_entropy-empty-vocab",
        _linear_cross_entropy(weight=torch.randn(0, 8)),
        ValueError,
        ["weight", "empty"],
    ),
    ("lora-in-features", _lora(weight=torch.randn(5, 7)), ValueError, ["weight", "in_features", "(5, 7)"]),
    ("lora-rank", _lora(lora_b=torch.randn(5, 3)), ValueError, ["lora_b", "rank", "(5, 3)"]),
    ("lora-a-in", _lora(lora_a=torch.randn(2, 9)), ValueError, ["lora_a", "(2, 9)"]),
    ("lora-out", _lora(lora_b=torch.randn(4, 2)), ValueError, ["lora_b", "out_features", "(4, 2)"]),
    ("lora-scaling", _lora(scaling=float("inf")), ValueError, ["scaling", "inf"]),
    ("lora-bias", _lora(bias=torch.randn(4)), ValueError, ["bias", "(4,)", "(5,)"]),
    (
        "lora-zero-rank",
        _lora(lora_a=torch.randn(0, 8), lora_b=torch.randn(5, 0)),
        ValueError,
        ["rank", ">= 1"],
    ),
    ("backend-name", _ln(backend="fast"), ValueError, ["backend", "'fast'"]),
]


@pytest.mark.parametrize("call,exc,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_clear_message(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_at_least_twenty_cases():
    assert len(CASES) >= 20
