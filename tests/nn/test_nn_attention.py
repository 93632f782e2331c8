"""ptft_fast.nn.Attention vs torch.nn.MultiheadAttention and an explicit softmax reference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptft_fast.nn import Attention


def _as_torch_mha(ours: Attention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(ours.embed_dim, ours.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        mha.out_proj.weight.copy_(ours.out.weight)
        mha.out_proj.bias.copy_(ours.out.bias)
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
    q = mod.q(x).view(b, tq, mod.num_heads, -1).transpose(1, 2)
    k = mod.k(kv).view(b, tk, mod.num_kv_heads, -1).transpose(1, 2)
    v = mod.v(kv).view(b, tk, mod.num_kv_heads, -1).transpose(1, 2)
    rep = mod.num_heads // mod.num_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = mod.softmax_scale if mod.softmax_scale is not None else mod.head_dim**-0.5
    scores = q @ k.transpose(-1, -2) * scale + bias
    if causal:  # bottom-right aligned
        i, j = torch.arange(tq)[:, None], torch.arange(tk)[None, :]
        scores = scores.masked_fill(j > i + (tk - tq), float("-inf"))
    out = F.softmax(scores, dim=-1) @ v  # (B, Hq, Tq, D)
    return mod.out(out.transpose(1, 2).reshape(b, tq, -1))


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


def _fused_copy(sep: Attention, fuse: str) -> Attention:
    """A fused module holding ``sep``'s weights: qkv = [q; k; v] or kv = [k; v]."""
    e, h, hkv, d = sep.embed_dim, sep.num_heads, sep.num_kv_heads, sep.head_dim
    fused = Attention(e, h, hkv, kv_dim=sep.k.in_features, head_dim=d, fuse=fuse, causal=sep.causal)
    with torch.no_grad():
        parts = [sep.q, sep.k, sep.v] if fuse == "qkv" else [sep.k, sep.v]
        target = fused.qkv if fuse == "qkv" else fused.kv
        target.weight.copy_(torch.cat([p.weight for p in parts]))
        target.bias.copy_(torch.cat([p.bias for p in parts]))
        if fuse == "kv":
            fused.q.load_state_dict(sep.q.state_dict())
        fused.out.load_state_dict(sep.out.state_dict())
    return fused


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_fused_layouts_match_separate_projections(num_kv_heads):
    """fuse="qkv" (self-attention in one GEMM, another source through weight slices) and
    fuse="kv" give the separate projections' outputs and gradients."""
    torch.manual_seed(0)
    b, t, s, e = 2, 6, 5, 32
    sep = Attention(e, 4, num_kv_heads, head_dim=6, causal=True)
    x, mem = torch.randn(b, t, e), torch.randn(b, s, e)
    qkv, kv = _fused_copy(sep, "qkv"), _fused_copy(sep, "kv")
    assert set(qkv.state_dict()) == {"qkv.weight", "qkv.bias", "out.weight", "out.bias"}
    assert set(kv.state_dict()) == {"q.weight", "q.bias", "kv.weight", "kv.bias", "out.weight", "out.bias"}
    for mod in (qkv, kv):
        torch.testing.assert_close(mod(x), sep(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mod(x, mem, causal=False), sep(x, mem, causal=False), atol=1e-5, rtol=1e-5)
    g = torch.randn(b, t, e)
    (qkv(x, mem, causal=False) * g).sum().backward()
    (sep(x, mem, causal=False) * g).sum().backward()
    nq = 4 * 6
    torch.testing.assert_close(qkv.qkv.weight.grad[:nq], sep.q.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        qkv.qkv.weight.grad[nq:], torch.cat([sep.k.weight.grad, sep.v.weight.grad]), atol=1e-5, rtol=1e-5
    )


def test_past_keys_values_extend_self_attention_and_replace_cross_projection():
    """Decoding token by token with ``past`` equals one causal pass; cross-attention with its
    cached keys/values equals projecting the memory again."""
    torch.manual_seed(0)
    b, t, s, e = 2, 5, 4, 16
    self_attn = Attention(e, 2, fuse="qkv", causal=True)
    cross = Attention(e, 2, fuse="kv")
    x, mem = torch.randn(b, t, e), torch.randn(b, s, e)
    full = self_attn(x)
    past, steps = None, []
    for i in range(t):
        y, past = self_attn(x[:, i : i + 1], past=past, return_kv=True)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert past[0].shape == (b, t, 2, 8)
    y0, cached = cross(x, mem, return_kv=True)
    torch.testing.assert_close(cross(x, mem * 0, past=cached), y0)  # memory not projected again


def test_packed_varlen_matches_each_sequence_alone():
    torch.manual_seed(0)
    e, lengths = 16, [3, 5, 1]
    mod = Attention(e, 2, fuse="qkv", causal=True)
    seqs = [torch.randn(n, e) for n in lengths]
    cu = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
    packed = mod(torch.cat(seqs), cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=5, max_seqlen_k=5)
    alone = torch.cat([mod(sq[None])[0] for sq in seqs])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_state_dict_with_the_first_release_names_loads_with_identical_outputs():
    """A checkpoint written before the fused layouts (q_proj/k_proj/v_proj/o_proj) loads strictly."""
    torch.manual_seed(0)
    old_names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "o_proj"}
    src = Attention(32, 4, 2, causal=True)
    old = {f"{old_names[k.split('.')[0]]}.{k.split('.')[1]}": v.clone() for k, v in src.state_dict().items()}
    assert set(old) == {f"{n}.{p}" for n in old_names.values() for p in ("weight", "bias")}
    outer = nn.Sequential(Attention(32, 4, 2, causal=True))  # under a prefix, as in a model
    outer.load_state_dict({f"0.{k}": v for k, v in old.items()})
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(outer[0](x), src(x), rtol=0, atol=0)


def test_bad_fuse():
    with pytest.raises(ValueError, match="fuse must be one of"):
        Attention(32, 4, fuse="qk")
    with pytest.raises(ValueError, match="kv_dim == embed_dim"):
        Attention(32, 4, kv_dim=16, fuse="qkv")
