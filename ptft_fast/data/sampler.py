"""A deterministic, resumable document sampler over token shards.

Each epoch visits the shards in a seeded random order and, inside a shard, its documents in a
seeded random order; the position is (epoch, shard position, offset). ``state_dict()`` captures it
and ``load_state_dict()`` continues exactly where it stopped — the stream after a restore equals
the stream of an uninterrupted run. With ``world_size > 1`` rank r takes offsets ≡ r (mod world).

Cost: a shard's permutation is built once per (epoch, shard) and kept, so handing out a document is
O(1) whatever the corpus size; :meth:`ResumableSampler.peek` / :meth:`advance` hand out a block of
documents of one shard as an array (the vectorised packer's interface).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ptft_fast.data.shards import TokenShards


@dataclass
class DocRef:
    """A document's place: shard and index inside the shard."""

    shard: int
    doc: int


class ResumableSampler:
    """Iterates (DocRef, tokens) for ``num_epochs`` epochs (None = forever)."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.shards, self.seed, self.shuffle = shards, seed, shuffle
        self.num_epochs, self.rank, self.world_size = num_epochs, rank, world_size
        self.epoch = 0
        self.shard_pos = 0
        self.offset = rank
        self._orders: dict[tuple, np.ndarray] = {}  # the current epoch's shard order and doc order

    def _cached(self, key: tuple, n: int) -> np.ndarray:
        """The seeded permutation of ``n`` for ``key``, built once while ``key`` is current."""
        if key not in self._orders:
            if len(self._orders) >= 2:  # one shard order + one doc order: keep memory O(shard)
                self._orders.clear()
            seeded = np.random.default_rng([self.seed, *key])
            self._orders[key] = seeded.permutation(n) if self.shuffle else np.arange(n)
        return self._orders[key]

    def _shard_order(self, epoch: int) -> np.ndarray:
        return self._cached((epoch,), self.shards.num_shards)

    def _doc_order(self, epoch: int, shard: int) -> np.ndarray:
        return self._cached((epoch, shard), self.shards.shard_num_docs(shard))

    def peek(self, max_docs: int) -> tuple[int, np.ndarray]:
        """The next ≤ ``max_docs`` documents, all of one shard, without consuming them:
        (shard, (k,) int64 document indices). k = 0 only at the end of the last epoch. Moves past
        exhausted shards and epochs (the same stream position)."""
        while self.num_epochs is None or self.epoch < self.num_epochs:
            order = self._shard_order(self.epoch)
            while self.shard_pos < len(order):
                shard = int(order[self.shard_pos])
                docs = self._doc_order(self.epoch, shard)
                if self.offset < len(docs):
                    stop = self.offset + max_docs * self.world_size
                    return shard, docs[self.offset : stop : self.world_size]
                self.shard_pos += 1
                self.offset = self.rank
            self.epoch += 1
            self.shard_pos = 0
            if self.shards.num_docs == 0:
                break
        return 0, np.zeros(0, dtype=np.int64)

    def advance(self, k: int) -> None:
        """Consume ``k`` documents of the block :meth:`peek` returned."""
        self.offset += k * self.world_size

    def __iter__(self) -> Iterator[tuple[DocRef, np.ndarray]]:
        return self

    def __next__(self) -> tuple[DocRef, np.ndarray]:
        shard, docs = self.peek(1)
        if not len(docs):
            raise StopIteration
        self.advance(1)
        ref = DocRef(shard, int(docs[0]))
        return ref, self.shards.document(ref.shard, ref.doc)

    def state_dict(self) -> dict:
        """Position and settings; a plain dict of ints (JSON-safe)."""
        return {
            "epoch": self.epoch,
            "shard_pos": self.shard_pos,
            "offset": self.offset,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the seed and rank layout must match this sampler's."""
        for key in ("seed", "rank", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state {key}={state[key]} does not match the sampler's {getattr(self, key)}"
                )
        self.epoch, self.shard_pos, self.offset = state["epoch"], state["shard_pos"], state["offset"]
