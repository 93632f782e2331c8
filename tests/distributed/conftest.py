"""Fixtures of the multi-rank DeepSpeed tests; helpers live in ds_testlib (put on sys.path here,
as ``--import-mode=importlib`` leaves test folders off it)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ds_testlib import BASE, run_ds, run_worker, sets, zero3_config


@pytest.fixture(scope="session")
def run_data(tmp_path_factory) -> Path:
    """Tokenizer + shards of the embedded corpus for BASE, built once (copied into each run folder)."""
    from ptft_fast.train.build import tokenizer_kind
    from ptft_fast.train.config import TrainConfig, merge
    from ptft_fast.train.data import prepare_run_data

    root = tmp_path_factory.mktemp("ds_data")
    cfg = merge(TrainConfig(), {**BASE, "out": str(root)}, "test")
    prepare_run_data(cfg, tokenizer_kind(cfg), root)
    return root / "data"


@pytest.fixture
def new_run(run_data, tmp_path):
    """``new_run(name)`` → an empty run folder holding the prepared data."""

    def make(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(run_data, out / "data")
        return out

    return make


@pytest.fixture(scope="session")
def zero3_full(run_data, tmp_path_factory) -> Path:
    """The 4-step BASE run on 2 ranks under ZeRO-3 (every parameter partitioned)."""
    out = tmp_path_factory.mktemp("zero3_full")
    shutil.copytree(run_data, out / "data")
    proc = run_ds(out, ["--deepspeed", str(zero3_config(out / "z3.json")), *sets(out=out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def zero3_partial(run_data, tmp_path_factory) -> Path:
    """Steps 1-2 of the same run, its checkpoint, and the gathered parameters at step 2."""
    out = tmp_path_factory.mktemp("zero3_partial")
    shutil.copytree(run_data, out / "data")
    proc = run_worker("partial", out, zero3_config(out / "z3.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def ft_base(tmp_path_factory) -> Path:
    """A model folder for fine-tuning: bert-tiny-cpu (dropout off) with a WordPiece tokenizer."""
    import torch

    from ptft_fast.data.corpus import embedded_corpus
    from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer
    from ptft_fast.hf import save_pretrained
    from ptft_fast.models import from_name

    tok = train_tokenizer(embedded_corpus()[:200], TokenizerConfig(kind="wordpiece", vocab_size=256))
    torch.manual_seed(0)
    model = from_name("bert-tiny-cpu", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id or 0,
                      dropout=0.0, attention_dropout=0.0)  # fmt: skip
    base = tmp_path_factory.mktemp("ft_base")
    save_pretrained(model, base)
    tok.save(base)
    return base
