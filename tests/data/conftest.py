"""Shared fixtures: small tokenizers trained once per session on the embedded corpus. Puts this
folder on sys.path for its helper module ``pii_sets`` (``--import-mode=importlib``)."""

import sys
from pathlib import Path

import pytest

from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return embedded_corpus()


@pytest.fixture(scope="session")
def wordpiece(corpus):
    return train_tokenizer(corpus, TokenizerConfig(kind="wordpiece", vocab_size=2000))


@pytest.fixture(scope="session")
def bpe(corpus):
    return train_tokenizer(corpus, TokenizerConfig(kind="bpe", vocab_size=1000))


@pytest.fixture(scope="session")
def unigram(corpus):
    return train_tokenizer(corpus[:30], TokenizerConfig(kind="unigram", vocab_size=1000, num_sentinels=20))


@pytest.fixture(scope="session")
def wp_docs(corpus, wordpiece) -> list[list[int]]:
    """The embedded corpus as WordPiece ids, one list per document (~125k tokens)."""
    return wordpiece.encode_batch(corpus)


def _chunks(docs: list[list[int]], length: int) -> list[list[int]]:
    """Consecutive ``length``-token pieces of every document (the remainder of each is dropped)."""
    return [d[i : i + length] for d in docs for i in range(0, len(d) - length + 1, length)]


@pytest.fixture(scope="session")
def chunks():
    return _chunks
