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
from ptft_fast.data.shards import ShardConfig, TokenShards, token_dtype, write_shards, write_token_shards


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


class _CountingRng:
    """np.random.default_rng stand-in that counts the elements of every permutation it builds."""

    built = 0

    def __init__(self, seed):
        self._rng = _REAL_DEFAULT_RNG(seed)

    def permutation(self, n):
        type(self).built += n
        return self._rng.permutation(n)


_REAL_DEFAULT_RNG = np.random.default_rng


@pytest.mark.parametrize("world_size", [1, 3])
def test_sampler_work_per_document_does_not_grow_with_the_shard(tmp_path, wordpiece, monkeypatch, world_size):
    """Handing out every document of an epoch permutes each shard once: O(1) per document, not
    O(shard size) (a permutation rebuilt per document is O(n²) per epoch)."""
    monkeypatch.setattr(np.random, "default_rng", _CountingRng)
    rng = _REAL_DEFAULT_RNG(0)
    per_doc = {}
    for n in (200, 4000):
        docs = (rng.integers(10, 100, size=rng.integers(1, 9)) for _ in range(n))
        write_token_shards(docs, wordpiece, tmp_path / str(n), shard_tokens=10**9)
        shards = TokenShards(tmp_path / str(n))
        _CountingRng.built = 0
        sampler = ResumableSampler(shards, seed=0, num_epochs=1, world_size=world_size)
        assert sum(1 for _ in sampler) == len(range(0, n, world_size))
        per_doc[n] = _CountingRng.built / n
    assert per_doc[4000] <= 1.01 * per_doc[200] + 0.01, per_doc  # one shard and one doc order per epoch


def _reference_rows(shards, sampler_args, plan, eos):
    """Rows by the plain per-document algorithm: one token stream (document + eos ...) cut into
    pieces of each request's length; the last piece padded with 0 / doc id -1."""
    stream, gids = [], []
    for ref, toks in ResumableSampler(shards, **sampler_args):
        piece = list(toks) + ([] if eos is None else [eos])
        stream += piece
        gids += [doc_global_id(ref)] * len(piece)
    out, pos = [], 0
    for n, seq_len in plan:
        for _ in range(n):
            if pos >= len(stream):
                break
            row, ids = stream[pos : pos + seq_len], gids[pos : pos + seq_len]
            pad = seq_len - len(row)
            out.append((np.array(row + [0] * pad), np.array(ids + [-1] * pad)))
            pos += seq_len
    return out


@pytest.mark.parametrize(("eos", "world_size", "rank"), [(3, 1, 0), (None, 1, 0), (3, 2, 1)])
def test_next_rows_equals_the_per_document_packer(shard_dir, eos, world_size, rank):
    """Vectorised packing over blocks of documents gives exactly the rows of the per-document
    algorithm, across shard and epoch boundaries, changing row lengths and batch sizes, and a
    save/restore at every request."""
    shards = TokenShards(shard_dir)
    args = dict(seed=5, num_epochs=2, world_size=world_size, rank=rank)
    rng = np.random.default_rng(0)
    plan = [(int(rng.integers(1, 40)), int(rng.choice([1, 7, 64, 300]))) for _ in range(400)]
    want = _reference_rows(shards, args, plan, eos)
    stream = PackedStream(ResumableSampler(shards, **args), 8, eos_id=eos)
    got = []
    for n, seq_len in plan:
        state = json.loads(json.dumps(stream.state_dict()))
        stream = PackedStream(ResumableSampler(shards, **args), seq_len, eos_id=eos)
        stream.load_state_dict(state)
        ids, docs = stream.next_rows(n)
        assert ids.shape == docs.shape and ids.shape[1] == seq_len and len(ids) <= n
        got += list(zip(ids, docs))
    assert len(got) == len(want) and len(want) < sum(n for n, _ in plan)  # the epochs ran out
    for (gi, gd), (wi, wd) in zip(got, want):
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gd, wd)
