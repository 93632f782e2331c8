"""Choosing and corrupting tokens for masked language modelling (BERT, SpanBERT, RoBERTa, ELECTRA).

Selection strategies (all only over non-special, non-padding positions — the *candidates*):

- ``"token"``: each candidate chosen with probability p (RoBERTa/HF), or, with ``fixed_count``,
  exactly round(p · #candidates) per sequence (BERT's original; gives static shapes).
- ``"whole_word"``: whole words are chosen (a word = a word-start token and its continuations);
  per-word probability p, or with ``fixed_count`` words in random order until the count is reached.
- ``"span"``: SpanBERT — span lengths in words ~ Geometric(0.2) clipped at 10, starts at random
  word starts, spans are separated by at least one unchosen word, until the budget round(p · n) is
  reached (the last span completes, so the budget can be exceeded by less than one span).

Corruption (BERT): of the chosen tokens 80% → [MASK], 10% → a random non-special token,
10% unchanged; labels hold the original id on chosen positions and -100 elsewhere. With the
``"span"`` strategy the choice is made once per span (SpanBERT: a whole span becomes [MASK], or
random tokens, or stays), unless ``span_level_replace`` is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ptft_fast.data.collate import IGNORE_INDEX

STRATEGIES = ("token", "whole_word", "span")


@dataclass
class MaskingConfig:
    """MLM masking recipe; defaults are BERT's."""

    mlm_probability: float = 0.15  # fraction of candidate tokens chosen
    mask_replace_prob: float = 0.8  # chosen → [MASK]
    random_replace_prob: float = 0.1  # chosen → random token (the rest stays unchanged)
    strategy: str = "token"  # "token" | "whole_word" | "span"
    fixed_count: bool = False  # exactly round(p · n) per sequence (token / whole_word)
    span_geometric_p: float = 0.2  # SpanBERT span length distribution (in words)
    span_max_words: int = 10
    span_level_replace: bool = True  # "span": one 80/10/10 draw per span (SpanBERT), not per token

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.strategy == "span" and self.fixed_count:
            raise ValueError(
                "fixed_count applies to 'token' and 'whole_word'; span masking completes its last span"
            )
        if self.mask_replace_prob + self.random_replace_prob > 1.0:
            raise ValueError("mask_replace_prob + random_replace_prob must be <= 1")


def span_length_distribution(p: float = 0.2, max_len: int = 10) -> np.ndarray:
    """(max_len,) probabilities of span lengths 1..max_len: Geometric(p) renormalized after clipping."""
    k = np.arange(1, max_len + 1)
    w = p * (1 - p) ** (k - 1)
    return w / w.sum()


def _word_starts(input_ids: torch.Tensor, candidates: torch.Tensor, word_start: np.ndarray) -> torch.Tensor:
    """(B, T) bool: candidate tokens that begin a word, and the first candidate after a
    non-candidate that ends words ([CLS], [SEP], padding; not an <unk> inside a word, whose
    table entry is False)."""
    table = torch.from_numpy(word_start[input_ids.numpy()])  # numpy: no thread-pool lookup
    after_boundary = torch.ones_like(candidates)
    after_boundary[:, 1:] = ~candidates[:, :-1] & table[:, :-1]
    return candidates & (table | after_boundary)


def _word_index(starts: torch.Tensor) -> torch.Tensor:
    """(B, T) position of the word start each token belongs to."""
    t = starts.shape[1]
    idx = torch.arange(t).expand_as(starts)
    return torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values


def choose_tokens(
    input_ids: torch.Tensor,
    candidates: torch.Tensor,
    cfg: MaskingConfig,
    gen: torch.Generator,
    word_start: np.ndarray | None = None,
) -> torch.Tensor:
    """(B, T) bool: the positions to predict.

    input_ids: (B, T) int64. candidates: (B, T) bool — maskable positions (not special, not pad).
    word_start: (V,) bool table, needed by "whole_word" and "span".
    """
    p = cfg.mlm_probability
    if cfg.strategy != "token" and word_start is None:
        raise ValueError(f"strategy {cfg.strategy!r} needs the tokenizer's word_start table")
    if cfg.strategy == "token":
        r = torch.rand(input_ids.shape, generator=gen)
        if not cfg.fixed_count:
            return (r < p) & candidates
        n = (candidates.sum(1).double() * p).round().long()
        r = r.masked_fill(~candidates, 2.0)
        rank = r.argsort(dim=1).argsort(dim=1)
        return (rank < n[:, None]) & candidates
    starts = _word_starts(input_ids, candidates, word_start)
    if cfg.strategy == "whole_word" and not cfg.fixed_count:
        r = torch.rand(input_ids.shape, generator=gen)
        return (r.gather(1, _word_index(starts)) < p) & candidates
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    out = torch.zeros_like(candidates)
    for b in range(input_ids.shape[0]):
        cand = candidates[b].numpy()
        word_pos = np.flatnonzero(starts[b].numpy())
        if len(word_pos) == 0:
            continue
        bounds = np.append(word_pos[1:], len(cand))  # a word's tokens: its candidates before the next
        sizes = np.add.reduceat(cand.astype(np.int64), word_pos)
        budget = round(cand.sum() * p)
        pick = _span_words if cfg.strategy == "span" else _fixed_words
        words = pick(word_pos, word_pos + sizes, budget, cfg, rng)
        for w in words:
            out[b, word_pos[w] : bounds[w]] = torch.from_numpy(cand[word_pos[w] : bounds[w]])
    return out


def _fixed_words(starts, ends, budget, cfg, rng) -> list[int]:
    """BERT whole-word masking: words in random order, skipping any that would pass the budget."""
    chosen, count = [], 0
    for w in rng.permutation(len(starts)):
        n = ends[w] - starts[w]
        if count >= budget:
            break
        if count + n > budget:
            continue
        chosen.append(int(w))
        count += n
    return chosen


def _span_words(starts, ends, budget, cfg, rng) -> list[int]:
    """SpanBERT: geometric span lengths (in words), spans never touch, until the budget is met."""
    n_words = len(starts)
    probs = span_length_distribution(cfg.span_geometric_p, cfg.span_max_words)
    taken = np.zeros(n_words + 2, dtype=bool)  # padded by one word on each side
    count, misses = 0, 0
    while count < budget and misses < 100:
        length = min(int(rng.choice(len(probs), p=probs)) + 1, n_words)
        # keep the sampled length and retry only the start, so the length distribution is unbiased
        for _ in range(20):
            w0 = int(rng.integers(0, n_words - length + 1))
            # the span and its neighbours must be free, so spans stay separate and measurable
            if not taken[w0 : w0 + length + 2].any():
                taken[w0 + 1 : w0 + length + 1] = True
                count += int((ends[w0 : w0 + length] - starts[w0 : w0 + length]).sum())
                break
        else:
            misses += 1
    return [int(w) for w in np.flatnonzero(taken[1 : n_words + 1])]


def corrupt(
    input_ids: torch.Tensor,
    chosen: torch.Tensor,
    cfg: MaskingConfig,
    gen: torch.Generator,
    mask_id: int,
    random_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply 80/10/10 (or ``cfg``'s split) to the chosen positions.

    random_ids: (R,) ids random replacements are drawn from (uniformly; the non-special vocab).
    Returns (corrupted input_ids (B, T), labels (B, T) with -100 where not chosen).
    """
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    r = torch.rand(input_ids.shape, generator=gen)
    if cfg.strategy == "span" and cfg.span_level_replace:
        r = r.gather(1, span_boundaries(chosen)[0].clamp(min=0))  # every token takes its span's draw
    to_mask = chosen & (r < cfg.mask_replace_prob)
    to_random = chosen & (r >= cfg.mask_replace_prob) & (r < cfg.mask_replace_prob + cfg.random_replace_prob)
    out = input_ids.masked_fill(to_mask, mask_id)
    draw = torch.randint(0, len(random_ids), input_ids.shape, generator=gen)
    # index_select: a (B, T) advanced index measured ~20 ms at 64×66 with 2 threads on a busy CPU
    picks = random_ids.index_select(0, draw.reshape(-1)).view(input_ids.shape)
    out = torch.where(to_random, picks, out)
    return out, labels


def span_boundaries(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) (B, T) int64: for each chosen position the first and last position of its run
    of chosen positions (a span: the span strategy keeps spans apart); -1 / T elsewhere.

    chosen: (B, T) bool."""
    b, t = chosen.shape
    idx = torch.arange(t).expand(b, t)
    prev = torch.zeros_like(chosen)
    prev[:, 1:] = chosen[:, :-1]
    nxt = torch.zeros_like(chosen)
    nxt[:, :-1] = chosen[:, 1:]
    start = torch.where(chosen & ~prev, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    last = torch.where(chosen & ~nxt, idx, torch.full_like(idx, t))
    end = last.flip(1).cummin(dim=1).values.flip(1)
    return start.masked_fill(~chosen, -1), end.masked_fill(~chosen, t)


def max_predictions(seq_len: int, p: float) -> int:
    """Static number of prediction slots for fixed-count masking: ceil(p · seq_len)."""
    return math.ceil(p * seq_len)
