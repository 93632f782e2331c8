"""ptft_fast.nn.Attention vs torch.nn.MultiheadAttention and an explicit softmax reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast.nn import Attention


def _as_torch_mha(ours: Attention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(ours.embed_dim, ours.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        mha.out_proj.weight.copy_(ours.o_proj.weight)
        mha.out_proj.bias.copy_(ours.o_proj.bias)
    return mha


@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_multihead_attention(causal):
    b, t, e, h = 3, 9, 32, 4
    ours = Attention(e, h, causal=causal)
    mha = _as_torch_mha(ours)
    x = torch.randn(b, t, e)
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, 6:] = False  # right padding
    y = ours(x, key_padding_mask=keep)
    attn_mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if causal else None  # True = blocked there
    y_ref, _ = mha(x, x, x, key_padding_mask=~keep, attn_mask=attn_mask, need_weights=False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def _reference(mod: Attention, x, kv, bias, causal):
    b, tq, tk = x.shape[0], x.shape[1], kv.shape[1]
    q = mod.q_proj(x).view(b, tq, mod.num_heads, -1).transpose(1, 2)
    k = mod.k_proj(kv).view(b, tk, mod.num_kv_heads, -1).transpose(1, 2)
    v = mod.v_proj(kv).view(b, tk, mod.num_kv_heads, -1).transpose(1, 2)
    rep = mod.num_heads // mod.num_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = mod.softmax_scale if mod.softmax_scale is not None else mod.head_dim**-0.5
    scores = q @ k.transpose(-1, -2) * scale + bias
    if causal:  # bottom-right aligned
        i, j = torch.arange(tq)[:, None], torch.arange(tk)[None, :]
        scores = scores.masked_fill(j > i + (tk - tq), float("-inf"))
    out = F.softmax(scores, dim=-1) @ v  # (B, Hq, Tq, D)
    return mod.o_proj(out.transpose(1, 2).reshape(b, tq, -1))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_gqa_cross_attention_with_bias_and_scale(num_kv_heads):
    b, tq, tk, e = 2, 5, 8, 32
    mod = Attention(e, 4, num_kv_heads, kv_dim=24, head_dim=6, bias=False, softmax_scale=1.0, causal=True)
    x, kv = torch.randn(b, tq, e), torch.randn(b, tk, 24)
    bias = torch.randn(1, 4, tq, tk, requires_grad=True)
    y = mod(x, kv, attn_bias=bias)
    assert y.shape == (b, tq, e)
    bias_ref = bias.detach().clone().requires_grad_()
    y_ref = _reference(mod, x, kv, bias_ref, causal=True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(bias.grad, bias_ref.grad, atol=1e-5, rtol=1e-5)


def test_bad_head_configuration():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        Attention(32, 4, 3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Attention(30, 4)


def test_prefix_lm_matches_torch_multihead_attention_with_a_per_row_mask():
    """prefix_lengths: row b's first prefix_lengths[b] tokens are seen by every query."""
    b, t, e, h = 2, 7, 32, 4
    ours = Attention(e, h, causal=True)
    mha = _as_torch_mha(ours)
    x, prefix = torch.randn(b, t, e), torch.tensor([3, 0])
    y = ours(x, prefix_lengths=prefix)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    blocked = (j > i)[None] & (j[None] >= prefix[:, None, None])  # (B, T, T), True = blocked
    y_ref, _ = mha(x, x, x, attn_mask=blocked.repeat_interleave(h, 0), need_weights=False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
