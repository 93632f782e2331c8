"""Logit processing: repetition penalty, temperature, top-k, top-p; stop-sequence matching."""

from __future__ import annotations

import torch


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty. logits: (N, V); seen: (N, V) bool, tokens already in the row.
    Positive logits are divided by ``penalty``, negative ones multiplied."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest per row; the rest → -inf. logits: (N, V)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest prefix of the sorted distribution with mass >= p
    (always at least the top token). logits: (N, V)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits: torch.Tensor, cfg, generator: torch.Generator | None) -> torch.Tensor:
    """(N, V) processed logits → (N,) next tokens: greedy argmax or a sample."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    logits = top_p_filter(top_k_filter(logits / cfg.temperature, cfg.top_k), cfg.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def ends_with_stop(tokens: list[int], stops: list[list[int]]) -> bool:
    """Whether the token list ends with any stop sequence."""
    return any(len(s) > 0 and len(tokens) >= len(s) and tokens[-len(s) :] == s for s in stops)
