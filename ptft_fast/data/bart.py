"""BART noising: the paper's five transformations, composable.

Each function takes the document body (1-D int64 array, no <s>/</s>) and a numpy Generator:

- :func:`token_masking`: each token → <mask> with probability ``ratio``.
- :func:`token_deletion`: each token deleted with probability ``ratio``.
- :func:`text_infilling`: round(ratio · n) tokens are covered by spans with Poisson(λ) lengths;
  each span becomes one <mask>; a zero-length span inserts a <mask>.
- :func:`sentence_permutation`: sentences (ending at a sentence-end token) shuffled.
- :func:`document_rotation`: the document is rotated to start at a uniformly chosen token.

:class:`BartNoiser` applies the enabled ones in the order permutation → rotation → infilling →
masking → deletion; masking and deletion never touch a <mask> inserted by infilling.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ptft_fast.data.collate import IGNORE_INDEX, pad_sequences, shift_right


def token_masking(tokens: np.ndarray, ratio: float, mask_id: int, rng: np.random.Generator) -> np.ndarray:
    """Replace each non-<mask> token by <mask> with probability ``ratio``."""
    hit = (rng.random(len(tokens)) < ratio) & (tokens != mask_id)
    return np.where(hit, mask_id, tokens)


def token_deletion(tokens: np.ndarray, ratio: float, mask_id: int, rng: np.random.Generator) -> np.ndarray:
    """Delete each non-<mask> token with probability ``ratio``."""
    drop = (rng.random(len(tokens)) < ratio) & (tokens != mask_id)
    return tokens[~drop]


def poisson_span_lengths(num_to_mask: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson(λ) lengths until they cover ``num_to_mask`` tokens; the last one is cut to fit exactly."""
    lengths: list[int] = []
    total = 0
    while total < num_to_mask:
        n = int(rng.poisson(lam))
        lengths.append(min(n, num_to_mask - total))
        total += lengths[-1]
    return np.asarray(lengths, dtype=np.int64)


def text_infilling(
    tokens: np.ndarray, ratio: float, mask_id: int, rng: np.random.Generator, lam: float = 3.0
) -> np.ndarray:
    """Replace spans covering round(ratio · n) tokens by one <mask> each (zero-length spans insert one).

    Spans are placed uniformly at random and never overlap: the spans and the kept tokens are laid
    out in a uniformly random order.
    """
    n = len(tokens)
    num_to_mask = round(ratio * n)
    if num_to_mask == 0:
        return tokens.copy()
    spans = poisson_span_lengths(num_to_mask, lam, rng)
    kept = n - num_to_mask
    items = np.concatenate([np.zeros(kept, dtype=bool), np.ones(len(spans), dtype=bool)])
    rng.shuffle(items)
    # each kept item takes one source token, each span item skips its length and emits one <mask>
    step = np.ones(len(items), dtype=np.int64)
    step[items] = spans
    src = np.cumsum(step) - step
    out = tokens[np.minimum(src, n - 1)].copy()
    out[items] = mask_id
    return out


def sentence_permutation(
    tokens: np.ndarray, sentence_end: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Shuffle the sentences; a sentence ends at a token where ``sentence_end[token]`` is True.

    sentence_end: (V,) bool table (e.g. the ids of ".", "!", "?"). A trailing fragment counts as a sentence.
    """
    ends = np.flatnonzero(sentence_end[tokens]) + 1
    bounds = np.concatenate([[0], ends[ends < len(tokens)], [len(tokens)]])
    sentences = [tokens[a:b] for a, b in itertools.pairwise(bounds)]
    if len(sentences) < 2:
        return tokens.copy()
    order = rng.permutation(len(sentences))
    return np.concatenate([sentences[i] for i in order])


def document_rotation(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate so the document starts at a uniformly chosen token."""
    if len(tokens) < 2:
        return tokens.copy()
    return np.roll(tokens, -int(rng.integers(0, len(tokens))))


@dataclass
class BartNoiseConfig:
    """Which transformations run and how strong; the default is the paper's best (infilling + permutation)."""

    mask_ratio: float = 0.0  # token masking
    delete_ratio: float = 0.0  # token deletion
    infill_ratio: float = 0.3  # text infilling: fraction of tokens inside masked spans
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    rotate_document: bool = False
    seed: int = 0


class BartNoiser:
    """Composes the transformations (see the module docstring)."""

    def __init__(self, mask_id: int, sentence_end: np.ndarray | None, cfg: BartNoiseConfig | None = None):
        self.cfg = cfg or BartNoiseConfig()
        if self.cfg.permute_sentences and sentence_end is None:
            raise ValueError("permute_sentences needs a sentence_end table")
        self.mask_id, self.sentence_end = mask_id, sentence_end
        self.rng = np.random.default_rng(self.cfg.seed)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        c, rng = self.cfg, self.rng
        x = np.asarray(tokens, dtype=np.int64)
        if c.permute_sentences:
            x = sentence_permutation(x, self.sentence_end, rng)
        if c.rotate_document:
            x = document_rotation(x, rng)
        if c.infill_ratio > 0:
            x = text_infilling(x, c.infill_ratio, self.mask_id, rng, c.poisson_lambda)
        if c.mask_ratio > 0:
            x = token_masking(x, c.mask_ratio, self.mask_id, rng)
        if c.delete_ratio > 0:
            x = token_deletion(x, c.delete_ratio, self.mask_id, rng)
        return x


def sentence_end_table(vocab: dict[str, int], vocab_size: int) -> np.ndarray:
    """(V,) bool: tokens that end a sentence ("." "!" "?" with or without a byte-level/metaspace prefix)."""
    table = np.zeros(vocab_size, dtype=bool)
    for tok, idx in vocab.items():
        if tok.lstrip("Ġ▁") in (".", "!", "?") or tok in ("Ċ", "ĊĊ"):
            table[idx] = True
    return table


class BartCollator:
    """Document bodies → input_ids (B, S) = <s> noised </s>, attention_mask (B, S),
    labels (B, T) = <s> original </s> (-100 padded), decoder_input_ids (B, T) shifted right from
    ``decoder_start_id`` (</s> in BART), decoder_attention_mask (B, T)."""

    def __init__(
        self,
        noiser: BartNoiser,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        decoder_start_id: int | None = None,
        max_length: int | None = None,
    ):
        self.noiser, self.bos_id, self.eos_id, self.pad_id = noiser, bos_id, eos_id, pad_id
        self.decoder_start_id = eos_id if decoder_start_id is None else decoder_start_id
        self.max_length = max_length

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        src, tgt = [], []
        body_max = None if self.max_length is None else self.max_length - 2
        bos, eos = np.array([self.bos_id]), np.array([self.eos_id])
        for ex in examples:
            body = np.asarray(ex, dtype=np.int64)[:body_max]
            tgt.append(np.concatenate([bos, body, eos]))
            src.append(np.concatenate([bos, self.noiser(body)[:body_max], eos]))
        input_ids = pad_sequences(src, self.pad_id)
        labels = pad_sequences(tgt, IGNORE_INDEX)
        return {
            "input_ids": input_ids,
            "attention_mask": (
                torch.arange(input_ids.shape[1])[None] < torch.tensor([len(s) for s in src])[:, None]
            ).long(),
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.decoder_start_id, self.pad_id),
            "decoder_attention_mask": (labels != IGNORE_INDEX).long(),
        }
