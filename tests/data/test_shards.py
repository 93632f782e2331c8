"""Token shards, the resumable sampler and document-preserving packing."""

import json

import numpy as np
import pytest
import torch

from ptft_fast.data.packing import (
    PackedStream,
    block_causal_mask,
    cu_seqlens_from_doc_ids,
    doc_global_id,
    position_ids_from_doc_ids,
)
from ptft_fast.data.sampler import DocRef, ResumableSampler
from ptft_fast.data.shards import ShardConfig, TokenShards, token_dtype, write_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, corpus, wordpiece):
    out = tmp_path_factory.mktemp("shards")
    write_shards(corpus, wordpiece, out, ShardConfig(shard_tokens=20_000, num_workers=2, progress=False))
    return out


def test_dtype_by_vocab_size():
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_shards_round_trip_in_parallel(shard_dir, corpus, wordpiece):
    shards = TokenShards(shard_dir)
    index = json.loads((shard_dir / "index.json").read_text())
    assert index["dtype"] == "uint16" and shards.num_shards > 3
    assert shards.num_docs == len(corpus)
    assert shards.num_tokens == sum(s["num_tokens"] for s in index["shards"]) > 100_000
    for doc, text in zip(shards.documents(), corpus):
        assert doc.tolist() == wordpiece.encode(text)
    assert isinstance(shards.tokens(0), np.memmap)
    assert shards.tokenizer().encode("hello") == wordpiece.encode("hello")
    assert not list(shard_dir.glob(".*tmp"))


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_is_deterministic_and_covers_every_doc_once_per_epoch(shard_dir):
    shards = TokenShards(shard_dir)
    refs = [(r.shard, r.doc) for r, _ in ResumableSampler(shards, seed=3, num_epochs=2)]
    n = shards.num_docs
    assert len(refs) == 2 * n
    assert len(set(refs[:n])) == n and len(set(refs[n:])) == n
    assert refs[:n] != refs[n:]  # reshuffled per epoch
    again = [(r.shard, r.doc) for r, _ in ResumableSampler(shards, seed=3, num_epochs=2)]
    assert again == refs


def test_sampler_resume_equals_uninterrupted(shard_dir):
    shards = TokenShards(shard_dir)
    full = [(r.shard, r.doc) for r, _ in ResumableSampler(shards, seed=7, num_epochs=3)]
    for cut in (0, 1, 50, 79, 100, 200):
        s = ResumableSampler(shards, seed=7, num_epochs=3)
        head = [(r.shard, r.doc) for r, _ in _take(s, cut)]
        state = json.loads(json.dumps(s.state_dict()))
        resumed = ResumableSampler(shards, seed=7, num_epochs=3)
        resumed.load_state_dict(state)
        assert head + [(r.shard, r.doc) for r, _ in resumed] == full


def test_sampler_ranks_partition_the_epoch(shard_dir):
    shards = TokenShards(shard_dir)
    parts = [{(r.shard, r.doc) for r, _ in ResumableSampler(shards, rank=k, world_size=3)} for k in range(3)]
    assert sum(len(p) for p in parts) == shards.num_docs
    assert set.union(*parts) == {(r.shard, r.doc) for r, _ in ResumableSampler(shards)}
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(shards, seed=1).load_state_dict(ResumableSampler(shards, seed=2).state_dict())


def test_packing_keeps_documents_and_resumes(shard_dir):
    shards = TokenShards(shard_dir)
    seq_len, eos = 128, 3
    rows = list(PackedStream(ResumableSampler(shards, seed=1), seq_len, eos_id=eos))
    # concatenating the rows gives back each document + eos, in sampler order, nothing lost
    flat = np.concatenate([r.input_ids for r in rows])
    ids = np.concatenate([r.doc_ids for r in rows])
    order = [doc_global_id(r) for r, _ in ResumableSampler(shards, seed=1)]
    pos = 0
    for gid in order:
        shard, doc = gid >> 40, gid & ((1 << 40) - 1)
        want = np.append(shards.document(shard, doc), eos)
        np.testing.assert_array_equal(flat[pos : pos + len(want)], want)
        assert (ids[pos : pos + len(want)] == gid).all()
        pos += len(want)
    assert (ids[pos:] == -1).all() and all(len(r.input_ids) == seq_len for r in rows)
    # resume mid-document
    stream = PackedStream(ResumableSampler(shards, seed=1), seq_len, eos_id=eos)
    head = _take(stream, 37)
    state = stream.state_dict()
    assert state["carry"] is not None
    resumed = PackedStream(ResumableSampler(shards, seed=1), seq_len, eos_id=eos)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for a, b in zip(head + list(resumed), rows, strict=True):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_cu_seqlens_never_cross_documents():
    doc_ids = torch.tensor([[5, 5, 5, 9, 9, -1], [9, 9, 2, 2, 2, 2]])
    cu, max_len = cu_seqlens_from_doc_ids(doc_ids)
    assert cu.tolist() == [0, 3, 5, 6, 8, 12] and cu.dtype == torch.int32 and max_len == 4
    assert position_ids_from_doc_ids(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]]
    mask = block_causal_mask(cu, 12)
    flat = doc_ids.reshape(-1)
    row = torch.arange(12) // 6
    qi, kj = torch.nonzero(mask, as_tuple=True)
    assert (flat[qi] == flat[kj]).all() and (row[qi] == row[kj]).all() and (kj <= qi).all()
    assert DocRef(1, 2) == DocRef(1, 2)


def test_large_vocab_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from ptft_fast.data.tokenizer import PtftTokenizer

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PtftTokenizer(backend)
    texts = ["w1 w65535 w65536 w69999", "w70000 w3"]
    index = write_shards(texts, tok, tmp_path, ShardConfig(num_workers=1, progress=False))
    assert index["dtype"] == "uint32"
    docs = [d.tolist() for d in TokenShards(tmp_path).documents()]
    assert docs == [[1, 65535, 65536, 69999], [0, 3]]
