"""Pre-training data: corpus preparation, tokenizers, token shards, packing and objectives.

Modules: ``corpus`` (readers, embedded corpus), ``filters``/``dedup``/``pii``/``prepare`` (cleaning
pipeline), ``tokenizer``, ``shards``, ``sampler``, ``packing``.
"""

from ptft_fast.data.corpus import Document, embedded_corpus, embedded_documents, read_documents
from ptft_fast.data.prepare import PrepareConfig, PrepareReport, prepare_corpus
from ptft_fast.data.sampler import ResumableSampler
from ptft_fast.data.shards import ShardConfig, TokenShards, write_shards
from ptft_fast.data.tokenizer import PtftTokenizer, TokenizerConfig, train_tokenizer

__all__ = [
    "Document",
    "PrepareConfig",
    "PrepareReport",
    "PtftTokenizer",
    "ResumableSampler",
    "ShardConfig",
    "TokenShards",
    "TokenizerConfig",
    "embedded_corpus",
    "embedded_documents",
    "prepare_corpus",
    "read_documents",
    "train_tokenizer",
    "write_shards",
]
