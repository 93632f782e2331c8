"""Tokenizers for the fine-tuning tests, trained once on the embedded corpus."""

import pytest

from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer


@pytest.fixture(scope="session")
def ft_wordpiece():
    return train_tokenizer(embedded_corpus()[:200], TokenizerConfig(kind="wordpiece", vocab_size=1024))


@pytest.fixture(scope="session")
def ft_bpe():
    return train_tokenizer(embedded_corpus()[:200], TokenizerConfig(kind="bpe", vocab_size=1024))
