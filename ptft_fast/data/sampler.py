"""A deterministic, resumable document sampler over token shards.

Each epoch visits the shards in a seeded random order and, inside a shard, its documents in a
seeded random order; the position is (epoch, shard position, offset). ``state_dict()`` captures it
and ``load_state_dict()`` continues exactly where it stopped — the stream after a restore equals
the stream of an uninterrupted run. With ``world_size > 1`` rank r takes offsets ≡ r (mod world).
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

    def _shard_order(self, epoch: int) -> np.ndarray:
        n = self.shards.num_shards
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def _doc_order(self, epoch: int, shard: int) -> np.ndarray:
        n = self.shards.shard_num_docs(shard)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, shard]).permutation(n)

    def __iter__(self) -> Iterator[tuple[DocRef, np.ndarray]]:
        return self

    def __next__(self) -> tuple[DocRef, np.ndarray]:
        while self.num_epochs is None or self.epoch < self.num_epochs:
            order = self._shard_order(self.epoch)
            while self.shard_pos < len(order):
                shard = int(order[self.shard_pos])
                docs = self._doc_order(self.epoch, shard)
                if self.offset < len(docs):
                    ref = DocRef(shard, int(docs[self.offset]))
                    self.offset += self.world_size
                    return ref, self.shards.document(ref.shard, ref.doc)
                self.shard_pos += 1
                self.offset = self.rank
            self.epoch += 1
            self.shard_pos = 0
            if self.shards.num_docs == 0:
                break
        raise StopIteration

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
