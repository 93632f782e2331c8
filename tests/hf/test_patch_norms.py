"""Norms found by behaviour (ptft_fast.hf.patch_norms): each family's norm class and unnamed
look-alikes are recognised as the form they compute, replacements share the parameters and
match the original (values and gradients, fp32), and modules that only look like norms are left
alone with the reason."""

import pytest
import torch
from installed import import_or_skip
from torch import nn

from ptft_fast.hf import patch_norms
from ptft_fast.hf.patch_norms import OffsetRMSNorm
from ptft_fast.nn import LayerNorm, RMSNorm

transformers = import_or_skip("transformers")
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402
from transformers.models.t5.modeling_t5 import T5LayerNorm  # noqa: E402

H = 24


class PlainRMS(nn.Module):
    """An RMSNorm under a name no table knows, eps under yet another attribute name."""

    def __init__(self, epsilon=1e-5, used=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(H))
        self.epsilon, self.used = epsilon, epsilon if used is None else used

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.used)


class Scale(nn.Module):
    """Looks like a norm (a (H,) weight, an eps) but only scales."""

    def __init__(self):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(H)), 1e-6

    def forward(self, x):
        return x * self.weight


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(H)), 1e-6

    def forward(self, x, gate):
        return x * gate


@pytest.mark.parametrize(
    "make,kind,cls",
    [
        (lambda: nn.LayerNorm(H, eps=1e-6), "layer_norm", LayerNorm),
        (lambda: nn.LayerNorm(H, bias=False), "layer_norm", LayerNorm),
        (lambda: nn.RMSNorm(H), "rms", RMSNorm),
        (lambda: nn.RMSNorm(H, eps=1e-3), "rms", RMSNorm),
        (lambda: LlamaRMSNorm(H, eps=1e-5), "rms", RMSNorm),
        (lambda: T5LayerNorm(H, eps=1e-6), "rms", RMSNorm),
        (lambda: GemmaRMSNorm(H, eps=1e-6), "offset_rms", OffsetRMSNorm),
        (lambda: PlainRMS(), "rms", RMSNorm),
    ],
)
def test_norms_are_recognised_and_replaced_exactly(make, kind, cls):
    module = make()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    assert patch_norms.candidate(module) and patch_norms.recognise(module) == (kind, "")
    new = patch_norms.replacement(module, kind, backend=None)
    assert type(new) is cls and new.weight is module.weight
    assert getattr(new, "bias", None) is getattr(module, "bias", None)
    x = (torch.randn(3, 5, H) + 0.3) * torch.tensor([1.0, 1e-3, 30.0]).view(3, 1, 1)
    g = torch.randn_like(x)

    def run(norm):  # output and the gradients of input and (shared) parameters
        xi = x.clone().requires_grad_()
        params = list(module.parameters())
        y = norm(xi)
        return [y, *torch.autograd.grad(y, [xi, *params], g)]

    for got, expected in zip(run(new), run(module), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gemma_offset_norm_is_exact_on_its_zero_init():
    """Gemma stores w = 0 for a unit scale: the replacement must not compute x·w (all zeros)."""
    module = GemmaRMSNorm(H)
    new = patch_norms.replacement(module, *patch_norms.recognise(module)[:1], backend=None)
    x = torch.randn(4, H)
    torch.testing.assert_close(new(x), module(x), atol=1e-6, rtol=1e-6)
    assert new(x).abs().sum() > 0


@pytest.mark.parametrize(
    "module,why",
    [
        (Scale(), "behaves like no LayerNorm/RMSNorm form with eps=1e-06"),
        (PlainRMS(epsilon=1e-6, used=1e-2), "behaves like no LayerNorm/RMSNorm form with eps=1e-06"),
        # an eps that only shows on small inputs (relative effect ~4e-6 at unit scale)
        (PlainRMS(epsilon=1e-6, used=1e-5), "behaves like no LayerNorm/RMSNorm form with eps=1e-06"),
        (TwoInputs(), "forward takes more than the hidden states"),
    ],
)
def test_look_alikes_are_left_alone_with_the_reason(module, why):
    assert patch_norms.candidate(module)
    assert patch_norms.recognise(module) == (None, why)


def test_only_leaf_modules_with_a_vector_weight_are_candidates():
    assert not patch_norms.candidate(nn.Linear(H, H))
    assert not patch_norms.candidate(nn.BatchNorm1d(H))  # buffers: never probed (it would update them)
    assert not patch_norms.candidate(nn.LayerNorm(H, elementwise_affine=False))
    assert not patch_norms.candidate(nn.Sequential(nn.LayerNorm(H)))


def test_swap_restores_and_reports():
    model = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, H), Scale(), GemmaRMSNorm(H))
    originals, kinds, left = patch_norms.swap(model, backend=None)
    assert kinds == {"0": "layer_norm", "3": "offset_rms"}
    assert left == ["norm 2 (Scale): behaves like no LayerNorm/RMSNorm form with eps=1e-06"]
    assert type(model[0]) is LayerNorm and type(model[3]) is OffsetRMSNorm
    patch_norms.restore(model, originals)
    assert model[0] is originals["0"] and model[3] is originals["3"]
