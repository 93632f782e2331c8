"""MLM over rows of packed documents (``doc_ids``): each document attends only to itself, with
positions restarting per document — a packed row gives what its documents give run alone."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.models.config import ModelConfig
from ptft_fast.models.encoder import EncoderForMaskedLM
from ptft_fast.models.heads import IGNORE_INDEX


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_packed_documents_equal_their_documents_alone(arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, vocab_size=97, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64,
                      max_position_embeddings=40, dropout=0.0, attention_dropout=0.0)  # fmt: skip
    model = EncoderForMaskedLM(cfg).eval()
    docs = [torch.randint(5, 97, (n,)) for n in (5, 3, 6, 2)]  # row 0: docs 0, 1 (+ 2 pads); row 1: 2, 3
    ids = torch.full((2, 10), cfg.pad_token_id)
    doc_ids = torch.full((2, 10), -1)
    ids[0, :8], doc_ids[0, :8] = torch.cat(docs[:2]), torch.tensor([0] * 5 + [1] * 3)
    ids[1, :8], doc_ids[1, :8] = torch.cat(docs[2:]), torch.tensor([2] * 6 + [3] * 2)
    with torch.no_grad():
        packed = model(ids, doc_ids=doc_ids, return_logits=True).logits
        alone = [
            model(d[None], attention_mask=torch.ones(1, len(d)), return_logits=True).logits[0] for d in docs
        ]
        crossed = model(ids, attention_mask=(doc_ids >= 0).long(), return_logits=True).logits
    torch.testing.assert_close(packed[0, :5], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, 5:8], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1, :6], alone[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1, 6:8], alone[3], atol=1e-5, rtol=1e-4)
    assert (crossed[0, 5:8] - alone[1]).abs().max() > 1e-3  # without doc_ids the documents see each other
    # the loss-only path (last layer at the labeled positions) scores the same tokens the same way
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 1], labels[0, 6], labels[1, 7] = ids[0, 1], ids[0, 6], ids[1, 7]
    with torch.no_grad():
        loss = model(ids, labels=labels, doc_ids=doc_ids).loss
    picked = torch.stack([alone[0][1], alone[1][1], alone[3][1]])
    want = torch.nn.functional.cross_entropy(picked, torch.stack([ids[0, 1], ids[0, 6], ids[1, 7]]))
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"doc_ids shape \(2, 9\) must equal input_ids shape \(2, 10\)"):
        model(ids, doc_ids=doc_ids[:, :9])
