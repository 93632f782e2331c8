"""Generation with a KV cache: greedy, sampling (temperature, top-k, top-p), beam search,
repetition penalty, stop sequences, batched left-padded prompts, streaming."""

from __future__ import annotations

from ptft_fast.generate.config import GenerationConfig
from ptft_fast.generate.decode import generate, left_pad
from ptft_fast.generate.stream import TextStreamer

__all__ = ["GenerationConfig", "TextStreamer", "generate", "left_pad"]
