"""Prefix tuning on T5 / BART puts trainable keys/values in front of the self-attention of both
stacks (encoder and decoder, Li & Liang's placement for encoder-decoders), not of cross-attention;
each stack's prefix changes that stack's output, and every prefix gets a gradient."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.models import from_name
from ptft_fast.nn import Attention
from ptft_fast.peft import PrefixTuningConfig, get_peft_model
from ptft_fast.peft.prefix import PrefixAttention


@pytest.mark.parametrize("preset", ["t5-tiny", "bart-tiny"])
def test_prefixes_in_both_stacks_self_attention_only(preset):
    torch.manual_seed(0)
    base = from_name(preset, dropout=0.0, attention_dropout=0.0).eval()
    n_enc, n_dec = base.config.num_layers, base.config.decoder_layers
    m = get_peft_model(base, "prefix", PrefixTuningConfig(num_virtual_tokens=3))
    wrapped = [n for n, mod in m.model.named_modules() if isinstance(mod, PrefixAttention)]
    assert sorted(wrapped) == sorted([f"encoder.layers.{i}.attn" for i in range(n_enc)] +
                                     [f"decoder.layers.{i}.attn" for i in range(n_dec)])  # fmt: skip
    assert all(isinstance(layer.cross, Attention) for layer in m.model.decoder.layers)  # not wrapped
    assert m.prefix_encoder.shape[1] == n_enc + n_dec  # one prefix per wrapped layer
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 500, (2, 7), generator=g)
    dec = torch.randint(3, 500, (2, 5), generator=g)
    emb = m.prefix_encoder.prefix_embedding.weight
    with torch.no_grad():
        emb.normal_(0, 1, generator=g)
    memory = m.encode(src)
    logits = m(src, decoder_input_ids=dec).logits
    # the encoder's prefixes (layers 0..n_enc-1) change the encoder output; the decoder's do not
    view = emb.view(3, n_enc + n_dec, -1)
    with torch.no_grad():
        view[:, n_enc:].add_(1.0)
    torch.testing.assert_close(m.encode(src), memory)
    assert not torch.allclose(m(src, decoder_input_ids=dec).logits, logits, atol=1e-4)  # decoder prefixes act
    with torch.no_grad():
        view[:, :n_enc].add_(1.0)
    assert not torch.allclose(m.encode(src), memory, atol=1e-4)
    m.train()
    m(src, decoder_input_ids=dec, labels=dec).loss.backward()
    grad = emb.grad.view(3, n_enc + n_dec, -1)
    assert all(grad[:, i].abs().sum() > 0 for i in range(n_enc + n_dec))  # every layer's prefix learns
    assert all(p.grad is None for n, p in m.model.named_parameters())  # the base model is frozen
