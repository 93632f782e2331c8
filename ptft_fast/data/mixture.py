"""Source mixtures: several corpora drawn with set weights ("carefully set the distribution of
pre-training data").

:class:`MixtureShards` shows several shard folders (one tokenizer) as one: its shard ids are the
sources' shard ids one after the other. :class:`MixtureSampler` draws the source of every document
from a seeded stream, with probabilities chosen so that the expected share of TOKENS from source i
is its weight (p_i ∝ w_i / mean document length_i); inside a source it walks a
:class:`ResumableSampler` that repeats the source as often as needed (upsampling). Its position is
(documents handed out, every source sampler's position): ``state_dict`` / ``load_state_dict``
continue exactly.

Written ``a.txt:0.7,b.txt:0.3`` (``ptft pretrain --data a.txt:0.7 b.txt:0.3``), or in YAML as a
list of ``{path: ..., weight: ...}`` or of ``"path:weight"`` strings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ptft_fast.data.sampler import DocRef, ResumableSampler
from ptft_fast.data.shards import TokenShards

CHUNK = 4096  # source draws made at once (a seeded block, so any position can be rebuilt)


def parse_mixture(spec) -> list[tuple[str, float]] | None:
    """[(path, weight), ...] for a mixture spec, None for a single path without a weight.

    spec: ``"a.txt:0.7,b.txt:0.3"``, or a list of such strings or of ``{"path", "weight"}`` dicts."""
    if spec is None:
        return None
    items = spec if isinstance(spec, list) else str(spec).split(",")
    out = []
    for item in items:
        if isinstance(item, dict):
            path, weight = item.get("path"), item.get("weight", 1.0)
        else:
            path, sep, w = str(item).strip().rpartition(":")
            if not sep or not _is_number(w):
                path, weight = str(item).strip(), None
            else:
                weight = float(w)
        out.append((str(path), weight))
    if len(out) == 1 and out[0][1] is None:
        return None
    bad = [f"{p}:{w}" for p, w in out if w is None or not np.isfinite(w) or w <= 0]
    if bad:
        raise ValueError(f"data mixture: every source needs a weight > 0 (path:weight), got {bad}")
    return [(p, float(w)) for p, w in out]


def mixture_spec(pairs: Sequence[tuple[str, float]]) -> str:
    """The one-string form of ``pairs`` (what TrainConfig.data holds)."""
    return ",".join(f"{p}:{w:g}" for p, w in pairs)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class MixtureShards:
    """Several :class:`TokenShards` of one tokenizer as one read-only view, with source weights."""

    def __init__(self, sources: Sequence[TokenShards], weights: Sequence[float]) -> None:
        if len(sources) != len(weights) or not sources:
            raise ValueError(
                f"need one weight per source, got {len(sources)} sources, {len(weights)} weights"
            )
        empty = [str(s.path) for s in sources if s.num_docs == 0]
        if empty:
            raise ValueError(f"data mixture: sources without documents: {empty}")
        total = float(sum(weights))
        self.sources, self.weights = list(sources), [w / total for w in weights]
        self.first = np.cumsum([0] + [s.num_shards for s in sources])  # global id of each source's shard 0
        self.path, self.dtype, self.index = sources[0].path, sources[0].dtype, sources[0].index

    def locate(self, shard: int) -> tuple[int, int]:
        """(source, shard inside the source) of global shard ``shard``."""
        src = int(np.searchsorted(self.first, shard, side="right")) - 1
        return src, shard - int(self.first[src])

    @property
    def num_shards(self) -> int:
        return int(self.first[-1])

    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self.sources)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.sources)

    def tokenizer(self):
        return self.sources[0].tokenizer()

    def offsets(self, shard: int) -> np.ndarray:
        src, local = self.locate(shard)
        return self.sources[src].offsets(local)

    def tokens(self, shard: int) -> np.ndarray:
        src, local = self.locate(shard)
        return self.sources[src].tokens(local)

    def shard_num_docs(self, shard: int) -> int:
        src, local = self.locate(shard)
        return self.sources[src].shard_num_docs(local)

    def document(self, shard: int, doc: int) -> np.ndarray:
        src, local = self.locate(shard)
        return self.sources[src].document(local, doc)

    def documents(self) -> Iterator[np.ndarray]:
        for s in self.sources:
            yield from s.documents()


class MixtureSampler:
    """Endless documents of a :class:`MixtureShards`, each source drawn with its probability."""

    def __init__(self, shards: MixtureShards, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.shards, self.seed, self.rank, self.world_size = shards, seed, rank, world_size
        self.subs = [
            ResumableSampler(s, seed=seed + i, num_epochs=None, rank=rank, world_size=world_size)
            for i, s in enumerate(shards.sources)
        ]
        mean_len = np.array([s.num_tokens / s.num_docs for s in shards.sources])
        p = np.asarray(shards.weights) / np.maximum(mean_len, 1e-9)
        self.probs = p / p.sum()  # per-document source probabilities: token shares = weights
        self.drawn = 0
        self._chunk: tuple[int, np.ndarray] | None = None

    def _draws(self, chunk: int) -> np.ndarray:
        if self._chunk is None or self._chunk[0] != chunk:
            rng = np.random.default_rng([self.seed, 0x6D6978, chunk])
            self._chunk = (chunk, rng.choice(len(self.subs), size=CHUNK, p=self.probs))
        return self._chunk[1]

    def _source_run(self) -> tuple[int, int]:
        """(source of the next document, how many documents in a row come from it)."""
        chunk, i = divmod(self.drawn, CHUNK)
        draws = self._draws(chunk)
        src = int(draws[i])
        other = np.flatnonzero(draws[i:] != src)
        return src, int(other[0]) if len(other) else CHUNK - i

    def peek(self, max_docs: int) -> tuple[int, np.ndarray]:
        """Like :meth:`ResumableSampler.peek`: the next ≤ ``max_docs`` documents, all of one shard
        of one source, as (global shard, (k,) document indices)."""
        src, run = self._source_run()
        shard, docs = self.subs[src].peek(min(max_docs, run))
        return int(self.shards.first[src]) + shard, docs

    def advance(self, k: int) -> None:
        src, _ = self._source_run()
        self.subs[src].advance(k)
        self.drawn += k

    def __iter__(self) -> Iterator[tuple[DocRef, np.ndarray]]:
        return self

    def __next__(self) -> tuple[DocRef, np.ndarray]:
        shard, docs = self.peek(1)
        self.advance(1)
        ref = DocRef(shard, int(docs[0]))
        return ref, self.shards.document(ref.shard, ref.doc)

    def state_dict(self) -> dict:
        return {
            "drawn": self.drawn,
            "seed": self.seed,
            "weights": list(self.shards.weights),
            "sources": [s.state_dict() for s in self.subs],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or not np.allclose(state.get("weights", []), self.shards.weights):
            raise ValueError(
                f"mixture state (seed {state.get('seed')}, weights {state.get('weights')}) does not match "
                f"this sampler's (seed {self.seed}, weights {self.shards.weights})"
            )
        for sub, s in zip(self.subs, state["sources"], strict=True):
            sub.load_state_dict(s)
        self.drawn = state["drawn"]


def make_sampler(shards, *, seed: int = 0, num_epochs: int | None = None):
    """The sampler for ``shards``: a :class:`MixtureSampler` for a mixture, else a
    :class:`ResumableSampler`."""
    if isinstance(shards, MixtureShards):
        return MixtureSampler(shards, seed=seed)
    return ResumableSampler(shards, seed=seed, num_epochs=num_epochs)
