"""ops.attention_weights: the probabilities ops.attention applies to v (weights @ v equals the
attention output), rows sum to one, masked keys get zero weight, bad input named."""

from __future__ import annotations

import pytest
import torch

from ptft_fast import ops


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("tq", "tk", "hkv"), [(5, 5, 4), (3, 7, 2), (6, 6, 1)])
def test_weights_times_v_is_the_attention_output(causal, tq, tk, hkv):
    g = torch.Generator().manual_seed(0)
    b, hq, d = 2, 4, 8
    q = torch.randn(b, tq, hq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, tk, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, tk, hkv, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, tk, dtype=torch.bool)
    mask[1, -2:] = False  # right padding: every query row keeps a key under the causal rule
    bias = torch.randn(1, hq, tq, tk, generator=g, dtype=torch.float64)
    kw = dict(causal=causal, key_padding_mask=mask, attn_bias=bias, softmax_scale=0.3)
    w = ops.attention_weights(q, k, **kw)
    assert w.shape == (b, hq, tq, tk) and w.dtype == torch.float32
    torch.testing.assert_close(w.sum(-1), torch.ones(b, hq, tq))
    assert (w[1, :, :, -2:] == 0).all()
    if causal:
        i, j = torch.arange(tq)[:, None], torch.arange(tk)[None, :]
        assert (w[..., j > i + (tk - tq)] == 0).all()
    v_rep = v.repeat_interleave(hq // hkv, dim=2).transpose(1, 2).float()  # (B, Hq, Tk, D)
    out = ops.attention(q, k, v, backend="torch", **kw).transpose(1, 2).float()
    torch.testing.assert_close(w @ v_rep, out, atol=1e-5, rtol=1e-5)


def test_bad_input_is_named():
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        ops.attention_weights(q, q, key_padding_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"q must be \(B, T, H, D\)"):
        ops.attention_weights(q[0], q)


def test_a_query_without_keys_gets_zeros_like_the_output():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 2, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[False, False, True, True]])
    w = ops.attention_weights(q, k, causal=True, key_padding_mask=mask)
    out = ops.attention(q, k, v, causal=True, key_padding_mask=mask, backend="torch")
    assert (w[0, :, :2] == 0).all() and (out[0, :2] == 0).all()
    torch.testing.assert_close(w[0, :, 2:].sum(-1), torch.ones(2, 2))


def test_prefix_lm_weights():
    """A prefix query sees a later prefix key and no key after the prefix; a suffix query sees the
    whole prefix and nothing after itself; rows still sum to one."""
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(2, 6, 2, 8, generator=g) for _ in range(2))
    w = ops.attention_weights(q, k, causal=True, prefix_lengths=torch.tensor([3, 0]))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6))
    assert (w[0, :, 0, 1:3] > 0).all() and (w[0, :, :3, 3:] == 0).all()
    assert (w[0, :, 4, :5] > 0).all() and (w[0, :, 4, 5:] == 0).all()
    assert (w[1].triu(1) == 0).all()  # no prefix: plain causal
