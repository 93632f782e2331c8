"""One dtype rule for the four ops (docs/op_contracts.md), on every backend that runs on CPU.

The op computes in its main input's dtype (x, q, hidden). Matmul operands must have that dtype;
the other tensors (norm weight/bias, residual, biases, attention bias) may have it or float32
when it is float16/bfloat16. Allowed mixes give the fp32 reference's values in the main dtype,
with gradients in each argument's own dtype; any other mix is a TypeError naming the argument."""

import pytest
import torch

from ptft_fast import ops
from ptft_fast.ops import reference

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# The Triton interpreter's bf16 dot is wrong (tests/models/test_autocast.py): fp16 stands for half there.
BACKENDS = [("torch", BF16), ("torch", F16), ("triton", F16)]


def _t(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.5).to(dtype).requires_grad_()


def _layer_norm(dt):
    """name → dtype per argument; returns (call(backend), reference call on fp32 copies)."""
    args = {"x": _t((3, 5, 16), dt["x"], 0), "weight": _t(16, dt["weight"], 1), "bias": _t(16, dt["bias"], 2)}
    args["residual"] = _t((3, 5, 16), dt["residual"], 3)

    def call(a, backend=None):
        kw = {"backend": backend} if backend else {}
        fn = ops.layer_norm if backend else reference.layer_norm_ref
        return fn(a["x"], a["weight"], a["bias"], 1e-5, residual=a["residual"], **kw)

    return args, call


def _attention(dt):
    args = {n: _t((2, 6, 2, 16), dt[n], i) for i, n in enumerate(("q", "k", "v"))}
    args["attn_bias"] = _t((1, 2, 6, 6), dt["attn_bias"], 4)

    def call(a, backend=None):
        fn = ops.attention if backend else reference.attention_ref
        kw = {"backend": backend} if backend else {}
        return fn(a["q"], a["k"], a["v"], causal=True, attn_bias=a["attn_bias"], **kw)

    return args, call


def _cross_entropy(dt):
    args = {"hidden": _t((2, 5, 16), dt["hidden"], 0), "weight": _t((37, 16), dt["weight"], 1)}
    args["bias"] = _t(37, dt["bias"], 2)
    labels = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(5))
    labels[0, 1] = -100

    def call(a, backend=None):
        fn = ops.linear_cross_entropy if backend else reference.linear_cross_entropy_ref
        kw = {"backend": backend} if backend else {}
        return fn(a["hidden"], a["weight"], labels, a["bias"], **kw)

    return args, call


def _lora(dt):
    args = {"x": _t((2, 5, 16), dt["x"], 0), "weight": _t((24, 16), dt["weight"], 1)}
    args.update(
        bias=_t(24, dt["bias"], 2), lora_a=_t((4, 16), dt["lora_a"], 3), lora_b=_t((24, 4), dt["lora_b"], 4)
    )

    def call(a, backend=None):
        fn = ops.lora_linear if backend else reference.lora_linear_ref
        kw = {"backend": backend} if backend else {}
        return fn(a["x"], a["weight"], a["bias"], a["lora_a"], a["lora_b"], 2.0, **kw)

    return args, call


OPS = {
    "layer_norm": (_layer_norm, "x", (), ("weight", "bias", "residual")),
    "attention": (_attention, "q", ("k", "v"), ("attn_bias",)),
    "linear_cross_entropy": (_cross_entropy, "hidden", ("weight",), ("bias",)),
    "lora_linear": (_lora, "x", ("weight", "lora_a", "lora_b"), ("bias",)),
}


def _dtypes(op: str, main_dtype, **changed) -> dict:
    _, main, operands, params = OPS[op]
    return {n: changed.get(n, main_dtype) for n in (main, *operands, *params)}


def _check_allowed(op: str, backend: str, dt: dict) -> None:
    build, main, _, _ = OPS[op]
    args, call = build(dt)
    out = call(args, backend)
    assert out.dtype == dt[main]
    ref_args = {n: t.detach().float().requires_grad_() for n, t in args.items()}
    ref = call(ref_args)
    tol = 2e-2 if dt[main] in (F16, BF16) else 1e-5
    torch.testing.assert_close(out.float(), ref.float(), atol=tol * 4, rtol=tol)
    out.float().square().sum().backward()
    ref.float().square().sum().backward()
    for n, t in args.items():
        assert t.grad is not None and t.grad.dtype == t.dtype, (n, t.grad, t.dtype)
        scale = ref_args[n].grad.abs().max().item() + 1.0
        torch.testing.assert_close(t.grad.float(), ref_args[n].grad, atol=tol * 8 * scale, rtol=tol * 4)


@pytest.mark.parametrize(("backend", "half"), BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_params_may_be_fp32_next_to_half_inputs(op, backend, half):
    _, _, _, params = OPS[op]
    _check_allowed(op, backend, _dtypes(op, half))  # one dtype throughout
    _check_allowed(op, backend, _dtypes(op, half, **dict.fromkeys(params, F32)))  # fp32 params


@pytest.mark.parametrize("op", list(OPS))
def test_fp32_throughout_and_fp64_throughout(op):
    _check_allowed(op, "torch", _dtypes(op, F32))
    _check_allowed(op, "torch", _dtypes(op, F64))


def _rejected(op: str, backend: str, culprit: str, dt: dict) -> None:
    build, main, _, _ = OPS[op]
    args, call = build(dt)
    with pytest.raises(
        TypeError, match=rf"{op}: {culprit} has dtype {dt[culprit]} but {main} has {dt[main]}"
    ):
        call(args, backend)


@pytest.mark.parametrize(("backend", "half"), BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_other_mixes_are_a_type_error_naming_the_argument(op, backend, half):
    _, _, operands, params = OPS[op]
    other_half = BF16 if half == F16 else F16
    for name in operands:  # a matmul operand in fp32 next to half inputs
        _rejected(op, backend, name, _dtypes(op, half, **{name: F32}))
    for name in params:
        # half params next to an fp32 main input (lower precision than the computation)
        _rejected(op, backend, name, _dtypes(op, F32, **{name: half}))
        # the other half type, and float64, next to half inputs
        _rejected(op, backend, name, _dtypes(op, half, **{name: other_half}))
        _rejected(op, backend, name, _dtypes(op, half, **{name: F64}))
