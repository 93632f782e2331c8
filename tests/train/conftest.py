"""Shared setup for trainer tests: run data (tokenizer + train/eval shards) built once per kind,
copied into each run folder so that runs skip tokenizer training."""

import shutil
from pathlib import Path

import pytest

from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import prepare_run_data

# Small, fast runs: short rows, tiny batches, no plots or progress bars.
TINY = dict(
    seq_len=32,
    micro_batch_size=4,
    max_steps=6,
    eval_batches=1,
    eval_every=0,
    save_every=0,
    log_every=1,
    progress=False,
    plot=False,
)


@pytest.fixture(scope="session")
def run_data(tmp_path_factory):
    """kind → a folder holding ``data/`` for that tokenizer kind (wordpiece, bpe, unigram)."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            root = tmp_path_factory.mktemp(f"data-{kind}")
            prepare_run_data(TrainConfig(), kind, root)
            made[kind] = root
        return made[kind]

    return get


@pytest.fixture
def new_run(run_data, tmp_path):
    """A run folder pre-filled with the cached data of ``kind``; returns its path."""

    def make(kind: str = "wordpiece", name: str = "run") -> Path:
        out = tmp_path / name
        shutil.copytree(run_data(kind) / "data", out / "data")
        return out

    return make


@pytest.fixture
def tiny() -> dict:
    """TrainConfig keys of a small, fast run."""
    return dict(TINY)
