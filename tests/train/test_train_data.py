"""Batch sources: a restored state yields exactly the batches of an uninterrupted source; the
sequence-length schedule changes the model length; unigram entropy."""

import math

import numpy as np
import pytest
import torch

from ptft_fast.data.packing import framed_doc_ids
from ptft_fast.data.shards import TokenShards
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource, unigram_entropy

CASES = [("mlm", "wordpiece"), ("electra", "wordpiece"), ("clm", "bpe"), ("prefix-lm", "bpe")]
CASES += [("span", "unigram"), ("infill", "bpe")]


def _source(objective, kind, run_data):
    shards = TokenShards(run_data(kind) / "data" / "train")
    return BatchSource(objective, shards, shards.tokenizer(), TrainConfig(objective=objective), seed=7)


@pytest.mark.parametrize(("objective", "kind"), CASES)
def test_state_roundtrip_gives_the_same_batches(objective, kind, run_data):
    a = _source(objective, kind, run_data)
    for _ in range(3):
        a.next(4, 32)
    state = a.state_dict()
    expected = [a.next(4, 32) for _ in range(2)]
    b = _source(objective, kind, run_data)
    b.load_state_dict(state)
    for want, got in zip(expected, [b.next(4, 32) for _ in range(2)]):
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), k


@pytest.mark.parametrize(("objective", "kind"), [("mlm", "wordpiece"), ("span", "unigram"), ("clm", "bpe")])
def test_seq_len_switch(objective, kind, run_data):
    src = _source(objective, kind, run_data)
    assert src.next(2, 32)["input_ids"].shape == (2, 32)
    assert src.next(2, 64)["input_ids"].shape == (2, 64)


def test_unigram_entropy(run_data):
    shards = TokenShards(run_data("wordpiece") / "data" / "train")
    v = shards.tokenizer().vocab_size
    counts = np.bincount(np.concatenate(list(shards.documents())).astype(np.int64), minlength=v)
    p = counts[counts > 0] / counts.sum()
    h = unigram_entropy(shards, v)
    assert h == pytest.approx(float(-(p * np.log(p)).sum()))
    assert 0 < h < math.log(v)


@pytest.mark.parametrize("objective", ["clm", "prefix-lm"])
@pytest.mark.parametrize("cross", [False, True])
def test_lm_batches_carry_documents_unless_cross_document_attention(objective, cross, run_data):
    """Default: doc_ids (and prefix-lm a prefix per document); the model's loss is the plain
    shifted cross-entropy over labels[:, 1:] (what label_counts counts), since no label sits on a
    document's first token. cross_document_attention: a row is one sequence."""
    from ptft_fast.models import from_name
    from ptft_fast.train.objectives import label_counts, model_inputs

    shards = TokenShards(run_data("bpe") / "data" / "train")
    tok = shards.tokenizer()
    cfg = TrainConfig(objective=objective, cross_document_attention=cross)
    b = BatchSource(objective, shards, tok, cfg, seed=7).next(4, 64)
    assert ("doc_ids" in b) == (not cross)
    assert ("prefix_mask" in b) == (objective == "prefix-lm")
    if objective == "prefix-lm" and not cross:  # a prefix at the start of every document piece
        starts = b["doc_ids"] != torch.nn.functional.pad(b["doc_ids"], (1, 0), value=-2)[:, :-1]
        assert bool(b["prefix_mask"][starts & (b["doc_ids"] >= 0)].all())
        assert int((b["prefix_mask"] & ~starts).sum()) > 0
    torch.manual_seed(0)
    model = from_name("gpt-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id).eval()
    with torch.no_grad():
        out = model(**model_inputs(b), return_logits=True)
    labels = b["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), labels, ignore_index=-100)
    torch.testing.assert_close(out.loss, ce, atol=1e-5, rtol=1e-5)
    assert label_counts(objective, b)["lm"] == int((labels != -100).sum()) > 0


def test_framed_doc_ids_give_cls_to_the_first_document_and_the_closing_sep_to_the_last():
    doc_ids = np.array([[5, 5, 7, 7, 7], [7, 9, 9, -1, -1]])
    got = framed_doc_ids(doc_ids, np.array([5, 3]), 7)
    assert got.tolist() == [[5, 5, 5, 7, 7, 7, 7], [7, 7, 9, 9, 9, -1, -1]]
    with pytest.raises(ValueError, match="does not fit"):
        framed_doc_ids(doc_ids, np.array([5, 3]), 6)
