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


@pytest.fixture
def make_model_dir(tmp_path):
    """make_model_dir(preset, tokenizer) → a folder with a random preset model and the tokenizer."""
    import torch

    from ptft_fast.hf import save_pretrained
    from ptft_fast.models import from_name

    def make(name, tokenizer, **overrides):
        torch.manual_seed(0)
        kw = {"vocab_size": tokenizer.vocab_size, **overrides}
        if tokenizer.pad_id is not None:
            kw["pad_token_id"] = tokenizer.pad_id
        d = tmp_path / f"base-{name}"
        save_pretrained(from_name(name, **kw), d)
        tokenizer.save(d)
        return d

    return make
