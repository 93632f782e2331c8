"""Token shards: parallel tokenization into numpy memmap files with a JSON index.

Layout of a shard folder::

    index.json              dtype, vocab size, totals and the list of shards (written last)
    shard_00000.bin         raw token ids of the shard's documents, back to back (uint16/uint32)
    shard_00000.idx.npy     (num_docs + 1,) int64 document offsets into the .bin (in tokens)
    tokenizer.json          the tokenizer the ids belong to

Documents are stored without special tokens and never span two shards. Every file is written
atomically and ``index.json`` last, so a folder with an index is complete.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptft_fast.data.progress import LiveBar
from ptft_fast.data.tokenizer import PtftTokenizer
from ptft_fast.utils.atomic import atomic_open, atomic_write_json

INDEX_FILE = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab ≤ 65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


@dataclass
class ShardConfig:
    """How to tokenize and split."""

    shard_tokens: int = 1 << 24  # a shard is closed once it holds at least this many tokens
    num_workers: int | None = None  # tokenizer processes; None = all cores
    batch_docs: int = 64  # documents per task sent to a worker
    progress: bool = True


_WORKER_TOK: PtftTokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _WORKER_TOK
    _WORKER_TOK = PtftTokenizer.from_str(tokenizer_json)


def _encode_batch(texts: list[str]) -> list[list[int]]:
    assert _WORKER_TOK is not None
    return _WORKER_TOK.encode_batch(texts)


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _windowed_imap(pool, batches: Iterator[list[str]], window: int) -> Iterator[list[list[int]]]:
    """``pool.imap`` over at most ``window`` batches at a time, in order.

    Pool.imap alone drains its input eagerly; windows keep a streamed corpus streamed.
    """
    while True:
        chunk = list(itertools.islice(batches, window))
        if not chunk:
            return
        yield from pool.imap(_encode_batch, chunk, chunksize=1)


class _ShardWriter:
    def __init__(self, out: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.dtype, self.shard_tokens = out, dtype, shard_tokens
        self.shards: list[dict] = []
        self._ctx = None
        self._fh = None
        self._offsets: list[int] = [0]

    def add(self, ids: list[int]) -> None:
        if self._fh is None:
            self._ctx = atomic_open(self.out / f"shard_{len(self.shards):05d}.bin", "wb")
            self._fh = self._ctx.__enter__()
            self._offsets = [0]
        self._fh.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(ids))
        if self._offsets[-1] >= self.shard_tokens:
            self.close_shard()

    def close_shard(self) -> None:
        if self._fh is None:
            return
        self._ctx.__exit__(None, None, None)
        self._fh = self._ctx = None
        name = f"shard_{len(self.shards):05d}"
        with atomic_open(self.out / f"{name}.idx.npy", "wb") as fh:
            np.save(fh, np.asarray(self._offsets, dtype=np.int64))
        self.shards.append(
            {
                "tokens": f"{name}.bin",
                "offsets": f"{name}.idx.npy",
                "num_docs": len(self._offsets) - 1,
                "num_tokens": self._offsets[-1],
            }
        )

    def abort(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._fh = self._ctx = None


def write_shards(
    texts: Iterable[str],
    tokenizer: PtftTokenizer,
    out_dir: str | os.PathLike,
    cfg: ShardConfig | None = None,
) -> dict:
    """Tokenize ``texts`` (streamed) with ``cfg.num_workers`` processes and write shards + index.

    Empty documents (no tokens) are skipped. Returns the index dict (also saved as ``index.json``).
    Document order in the shards equals the input order.
    """
    cfg = cfg or ShardConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writer = _ShardWriter(out, dtype, cfg.shard_tokens)
    workers = cfg.num_workers or os.cpu_count() or 1
    pool = bar = None
    try:
        if workers > 1:
            # the parent may have used the tokenizers thread pool; children get their own processes
            old = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                pool = mp.get_context("fork").Pool(workers, _init_worker, (tokenizer.to_str(),))
            finally:
                if old is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = old
            results = _windowed_imap(pool, _batches(texts, cfg.batch_docs), 4 * workers)
        else:
            results = (tokenizer.encode_batch(b) for b in _batches(texts, cfg.batch_docs))
        # after the fork: the bar's redraw thread is not copied into the workers
        bar = LiveBar(f"tokenize ({out.name})", unit="doc", enabled=cfg.progress)
        for batch in results:
            for ids in batch:
                if ids:
                    writer.add(ids)
            bar.update(len(batch))
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return _write_index(writer, tokenizer, out, dtype)


def write_token_shards(
    docs: Iterable[Sequence[int] | np.ndarray],
    tokenizer: PtftTokenizer,
    out_dir: str | os.PathLike,
    shard_tokens: int = 1 << 24,
) -> dict:
    """Shards from documents that are already token ids (synthetic corpora, tests, benchmarks);
    empty documents are skipped. Returns the index dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writer = _ShardWriter(out, dtype, shard_tokens)
    try:
        for ids in docs:
            if len(ids):
                writer.add(ids)
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    return _write_index(writer, tokenizer, out, dtype)


def _write_index(writer: _ShardWriter, tokenizer: PtftTokenizer, out: Path, dtype: np.dtype) -> dict:
    """Save the tokenizer and ``index.json`` (last: its presence marks a complete folder)."""
    tokenizer.save(out)
    index = {
        "format": "ptft-token-shards-v1",
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "num_docs": sum(s["num_docs"] for s in writer.shards),
        "num_tokens": sum(s["num_tokens"] for s in writer.shards),
        "tokenizer": "tokenizer.json",
        "shards": writer.shards,
    }
    atomic_write_json(out / INDEX_FILE, index)
    return index


class TokenShards:
    """Read-only view of a shard folder; token files are memory-mapped on first use."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        index_file = self.path / INDEX_FILE
        if not index_file.is_file():
            raise FileNotFoundError(f"no {INDEX_FILE} in {str(self.path)!r} (shards missing or incomplete)")
        self.index = json.loads(index_file.read_text())
        self.dtype = np.dtype(self.index["dtype"])
        self._tokens: dict[int, np.ndarray] = {}
        self._offsets: dict[int, np.ndarray] = {}

    @property
    def num_shards(self) -> int:
        return len(self.index["shards"])

    @property
    def num_docs(self) -> int:
        return self.index["num_docs"]

    @property
    def num_tokens(self) -> int:
        return self.index["num_tokens"]

    def tokenizer(self) -> PtftTokenizer:
        return PtftTokenizer.from_file(self.path / self.index["tokenizer"])

    def offsets(self, shard: int) -> np.ndarray:
        """(num_docs + 1,) int64 token offsets of the documents of ``shard``."""
        if shard not in self._offsets:
            self._offsets[shard] = np.load(self.path / self.index["shards"][shard]["offsets"])
        return self._offsets[shard]

    def tokens(self, shard: int) -> np.ndarray:
        """(num_tokens,) memmap of the token ids of ``shard``."""
        if shard not in self._tokens:
            info = self.index["shards"][shard]
            if info["num_tokens"] == 0:
                self._tokens[shard] = np.zeros(0, dtype=self.dtype)
            else:
                self._tokens[shard] = np.memmap(self.path / info["tokens"], dtype=self.dtype, mode="r")
        return self._tokens[shard]

    def shard_num_docs(self, shard: int) -> int:
        return self.index["shards"][shard]["num_docs"]

    def document(self, shard: int, doc: int) -> np.ndarray:
        """(L,) token ids of document ``doc`` of ``shard`` (a read-only view)."""
        off = self.offsets(shard)
        return self.tokens(shard)[off[doc] : off[doc + 1]]

    def documents(self) -> Iterator[np.ndarray]:
        """Every document in storage order."""
        for s in range(self.num_shards):
            for d in range(self.shard_num_docs(s)):
                yield self.document(s, d)
