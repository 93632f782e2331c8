"""Learning-rate and sequence-length schedules (pure functions of the step: resume-safe)."""

from __future__ import annotations

import math

from ptft_fast.train.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (step 0 gets 1/warmup), then:
    constant; linear or cosine decay to ``min_lr_ratio`` at ``max_steps``; or inverse-sqrt
    (``sqrt(warmup / step)``, the Transformer / T5 rule, floored at ``min_lr_ratio``).
    """
    warm = cfg.warmup
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "inverse_sqrt":
        return max(floor, math.sqrt(max(warm, 1) / max(step + 1, 1)))
    progress = min(1.0, (step - warm) / max(1, cfg.max_steps - warm))
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def seq_len_at(step: int, cfg: TrainConfig) -> int:
    """Sequence length for step ``step``: ``seq_len``, then ``long_seq_len`` from
    ``long_seq_len_start · max_steps`` on (BERT: 128 for 90% of the steps, then 512)."""
    if cfg.long_seq_len and step >= math.ceil(cfg.long_seq_len_start * cfg.max_steps):
        return cfg.long_seq_len
    return cfg.seq_len
