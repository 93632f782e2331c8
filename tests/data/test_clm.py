"""CLM (padded and packed) and prefix LM collators."""

import numpy as np
import torch

from ptft_fast import ops
from ptft_fast.data.clm import CLMCollator, PackedCLMCollator, PrefixLMCollator, prefix_lm_attention_mask
from ptft_fast.data.packing import PackedSequence, block_causal_mask


def test_clm_padding_and_labels():
    b = CLMCollator(pad_id=0)([[5, 6, 7], [8, 9]])
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[5, 6, 7], [8, 9, -100]]


def _packed_rows(wp_docs, seq_len=64, eos=3):
    """Pack the embedded documents (+eos) greedily, splitting at row ends."""
    rows, ids, docs = [], [], []
    for d, toks in enumerate(wp_docs):
        for t in [*toks, eos]:
            ids.append(t)
            docs.append(d)
            if len(ids) == seq_len:
                rows.append(PackedSequence(np.array(ids), np.array(docs)))
                ids, docs = [], []
    pad = seq_len - len(ids)
    rows.append(PackedSequence(np.array(ids + [0] * pad), np.array(docs + [-1] * pad)))
    return rows


def test_packed_clm_never_crosses_documents(wp_docs):
    rows = _packed_rows(wp_docs[:20])
    b = PackedCLMCollator()(rows[-32:])
    ids, labels, doc_ids, pos = b["input_ids"], b["labels"], b["doc_ids"], b["position_ids"]
    bsz, t = ids.shape
    cu = b["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == bsz * t
    assert int(b["max_seqlen"]) == int((cu[1:] - cu[:-1]).max())
    flat_docs = doc_ids.reshape(-1)
    for a, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert (flat_docs[a:e] == flat_docs[a]).all(), "a segment mixes documents"
        assert a // t == (e - 1) // t, "a segment crosses a row"
        assert pos.reshape(-1)[a:e].tolist() == list(range(e - a))
    mask = block_causal_mask(cu, bsz * t)
    q, k = torch.nonzero(mask, as_tuple=True)
    assert (flat_docs[q] == flat_docs[k]).all() and (k <= q).all()
    # a token is only ever a target of the previous token of the same document
    for r in range(bsz):
        for j in range(1, t):
            if labels[r, j] != -100:
                assert doc_ids[r, j] == doc_ids[r, j - 1] >= 0
                assert labels[r, j] == ids[r, j]
    starts = (pos == 0) & (doc_ids >= 0)
    assert (labels[starts] == -100).all() and (labels[doc_ids < 0] == -100).all()
    assert (b["attention_mask"] == (doc_ids >= 0).long()).all()


def test_prefix_lm_masks_and_labels():
    coll = PrefixLMCollator(pad_id=0, prefix_length=2)
    b = coll([[5, 6, 7, 8], [9, 10, 11]])
    assert b["prefix_lengths"].tolist() == [2, 2]
    assert b["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, 11, -100]]
    m = prefix_lm_attention_mask(b["prefix_mask"], b["attention_mask"])
    expect0 = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m[0], expect0)
    assert not m[1, :, 3].any()  # padding is never attended


def test_prefix_lm_random_prefix_is_uniform(wp_docs):
    coll = PrefixLMCollator(pad_id=0, seed=1)
    seqs = [list(range(1, 11))] * 20_000
    p = coll(seqs)["prefix_lengths"].numpy()
    assert p.min() == 1 and p.max() == 9
    assert np.allclose(np.bincount(p, minlength=10)[1:] / len(p), 1 / 9, atol=0.01)


def test_prefix_lm_fixed_fraction_and_causal_share():
    """prefix_fraction: the prefix is round(f·n) clipped to [1, n - 1], whatever the seed;
    causal_share: that share of sequences gets a 1-token prefix (a causal-LM sequence, every later
    token scored), the others keep their prefix."""
    seqs = [list(range(1, n + 1)) for n in (2, 3, 4, 10, 64)]
    half = PrefixLMCollator(pad_id=0, prefix_fraction=0.5)(seqs)
    assert half["prefix_lengths"].tolist() == [1, 2, 2, 5, 32]  # n = 3: 1.5 rounds to 2 = n - 1
    assert half["labels"][4, :32].eq(-100).all() and half["labels"][4, 32:].tolist() == list(range(33, 65))
    mixed = PrefixLMCollator(pad_id=0, prefix_fraction=0.5, causal_share=0.25, seed=3)([seqs[-1]] * 20_000)
    p = mixed["prefix_lengths"]
    assert set(p.tolist()) == {1, 32} and abs(float((p == 1).float().mean()) - 0.25) < 0.01
    causal = mixed["labels"][p == 1][0]
    assert causal[0] == -100 and causal[1:].tolist() == list(range(2, 65))  # every later token scored
    uniform = PrefixLMCollator(pad_id=0, seed=1)([seqs[-1]] * 100)["prefix_lengths"]
    assert torch.equal(
        uniform, PrefixLMCollator(pad_id=0, seed=1, causal_share=0.0)([seqs[-1]] * 100)["prefix_lengths"]
    )  # the default draws are unchanged


def test_packed_batch_drives_varlen_attention_without_leaks(wp_docs):
    b = PackedCLMCollator()(_packed_rows(wp_docs[:6], seq_len=48)[:6])
    bsz, t = b["input_ids"].shape
    total, h, d = bsz * t, 2, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(total, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    cu, max_len = b["cu_seqlens"], int(b["max_seqlen"])
    kw = dict(causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len, max_seqlen_k=max_len)
    out = ops.attention(q, k, v, backend="torch", **kw)
    # dense oracle with the block-causal mask built from the same cu_seqlens
    mask = block_causal_mask(cu, total)
    scores = torch.einsum("qhd,khd->hqk", q, k) / d**0.5
    ref = torch.einsum("hqk,khd->qhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref)
    # changing one document's keys/values changes nothing for the other documents
    flat = b["doc_ids"].reshape(-1)
    victim = flat == flat[t // 2]
    k2, v2 = k.clone(), v.clone()
    k2[victim] += 5.0
    v2[victim] -= 3.0
    out2 = ops.attention(q, k2, v2, backend="torch", **kw)
    torch.testing.assert_close(out2[~victim], out[~victim])
    assert not torch.allclose(out2[victim], out[victim])


def test_prefix_lm_collate_rows_equals_the_list_path(wp_docs):
    rows = [np.asarray(d[:30], dtype=np.int64) for d in wp_docs[:20] if len(d) >= 2]
    rows = [r[: 2 + i % 20] for i, r in enumerate(rows)]
    body = np.zeros((len(rows), 30), dtype=np.int64)
    for i, r in enumerate(rows):
        body[i, : len(r)] = r
    want = PrefixLMCollator(pad_id=0, seed=2)(rows)
    got = PrefixLMCollator(pad_id=0, seed=2).collate_rows(body, np.array([len(r) for r in rows]))
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_prefix_lm_collate_documents_gives_each_document_its_own_prefix(wp_docs):
    """Packed rows: every document piece gets a prefix in [1, n - 1] (a one-token piece: the token
    alone), labels on the rest of the piece only, doc_ids passed on; checked piece by piece."""
    rows = _packed_rows(wp_docs[:30], seq_len=40)
    ids = np.stack([r.input_ids for r in rows])
    docs = np.stack([r.doc_ids for r in rows])
    docs[0, 5] = 10_000  # a one-token document piece
    b = PrefixLMCollator(pad_id=0, seed=4).collate_documents(ids, docs)
    assert set(b) == {"input_ids", "attention_mask", "labels", "doc_ids", "prefix_mask"}
    assert torch.equal(b["doc_ids"], torch.from_numpy(docs)) and torch.equal(
        b["input_ids"], torch.from_numpy(ids)
    )
    assert torch.equal(b["attention_mask"], torch.from_numpy(docs >= 0).long())
    prefixes = []
    for r in range(len(rows)):
        j = 0
        while j < docs.shape[1]:
            n = int(np.argmax(np.append(docs[r, j:] != docs[r, j], True)))  # the piece's length
            piece = slice(j, j + n)
            if docs[r, j] < 0:
                assert not b["prefix_mask"][r, piece].any() and (b["labels"][r, piece] == -100).all()
            else:
                p = int(b["prefix_mask"][r, piece].sum())
                assert b["prefix_mask"][r, piece].tolist() == [True] * p + [False] * (n - p)
                assert (1 <= p <= n - 1) if n >= 2 else p == 1
                assert b["labels"][r, piece].tolist() == [-100] * p + ids[r, j + p : j + n].tolist()
                prefixes.append((n, p))
            j += n
    assert (1, 1) in prefixes and len({p for n, p in prefixes if n > 10}) > 3  # random, not fixed
    again = PrefixLMCollator(pad_id=0, seed=4).collate_documents(ids, docs)
    assert all(torch.equal(again[k], b[k]) for k in b)  # seeded
    fixed = PrefixLMCollator(pad_id=0, prefix_length=3).collate_documents(ids, docs)
    lengths = [n for n, _ in prefixes]
    assert int(fixed["prefix_mask"].sum()) == sum(min(3, max(n - 1, 1)) for n in lengths)
