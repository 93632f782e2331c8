"""Pre-training data: corpus preparation, tokenizers, token shards, packing and objectives.

Modules: ``corpus`` (readers, embedded corpus), ``filters``/``dedup``/``pii``/``prepare`` (cleaning
pipeline), ``tokenizer``, ``shards``, ``sampler``, ``packing``; objectives: ``masking``/``mlm``
(+ ``nsp``), ``clm`` (CLM, packed CLM, prefix LM), ``t5`` (span corruption), ``bart`` (noising),
``electra`` (replaced-token detection).
"""

from ptft_fast.data.bart import BartCollator, BartNoiseConfig, BartNoiser
from ptft_fast.data.clm import CLMCollator, PackedCLMCollator, PrefixLMCollator
from ptft_fast.data.corpus import Document, embedded_corpus, embedded_documents, read_documents
from ptft_fast.data.electra import electra_loss, electra_masking, replace_with_generator_samples
from ptft_fast.data.masking import MaskingConfig
from ptft_fast.data.mlm import MLMCollator, MLMConfig
from ptft_fast.data.nsp import NSPConfig, build_nsp_examples
from ptft_fast.data.packing import PackedStream
from ptft_fast.data.prepare import PrepareConfig, PrepareReport, prepare_corpus
from ptft_fast.data.sampler import ResumableSampler
from ptft_fast.data.shards import ShardConfig, TokenShards, write_shards
from ptft_fast.data.t5 import T5Config, T5SpanCorruptionCollator, t5_raw_length
from ptft_fast.data.tokenizer import PtftTokenizer, TokenizerConfig, train_tokenizer

__all__ = [
    "BartCollator",
    "BartNoiseConfig",
    "BartNoiser",
    "CLMCollator",
    "Document",
    "MLMCollator",
    "MLMConfig",
    "MaskingConfig",
    "NSPConfig",
    "PackedCLMCollator",
    "PackedStream",
    "PrefixLMCollator",
    "PrepareConfig",
    "PrepareReport",
    "PtftTokenizer",
    "ResumableSampler",
    "ShardConfig",
    "T5Config",
    "T5SpanCorruptionCollator",
    "TokenShards",
    "TokenizerConfig",
    "build_nsp_examples",
    "electra_loss",
    "electra_masking",
    "embedded_corpus",
    "embedded_documents",
    "prepare_corpus",
    "read_documents",
    "replace_with_generator_samples",
    "t5_raw_length",
    "train_tokenizer",
    "write_shards",
]
