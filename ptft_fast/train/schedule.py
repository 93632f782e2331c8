"""Learning-rate and sequence-length schedules (pure functions of the step and the elapsed
training time, both saved in checkpoints: resume-safe).

With a time budget (``max_time_s`` > 0) the learning-rate schedule runs over the steps that fit in
it: :func:`planned_steps` re-estimates them at every step from the step rate measured so far
(steps done × max_time_s / elapsed), capped by ``max_steps`` if it is given. Warm-up (10 % of the planned steps
unless ``warmup_steps`` is given) and decay therefore end when the time does, instead of being
laid out over a ``max_steps`` the run never reaches. The decay is planned to reach its floor
:data:`BUDGET_MARGIN_STEPS` steps before the estimated end: which step is the last one is known only
once the time is up, and a last step slower than the mean (a loaded machine) would otherwise end
the run a step or two above the floor.

The budget is per invocation (a resumed run gets ``max_time_s`` again), so the plan of a resumed
run is the steps made before it plus those that fit in its own budget at its own step rate:
``start`` = (step, elapsed seconds) at which this invocation began.
"""

from __future__ import annotations

import math

from ptft_fast.train.config import TrainConfig

BUDGET_MARGIN_STEPS = 2  # a time-budgeted decay ends this many (mean) steps before the budget


START = (0, 0.0)  # a run that was not resumed: its invocation began at step 0, 0 s


def planned_steps(
    step: int, cfg: TrainConfig, elapsed_s: float = 0.0, start: tuple[int, float] = START
) -> int:
    """Steps the run will make: its step limit (``TrainConfig.step_limit``), or with ``max_time_s``
    (capped by the limit) the steps made before this
    invocation (``start``: its first step and the run's elapsed seconds then) plus those that fit
    in its time budget at the rate it measured: ``step - start[0]`` steps in
    ``elapsed_s - start[1]`` seconds."""
    done, took = step - start[0], elapsed_s - start[1]
    if cfg.max_time_s <= 0 or done <= 0 or took <= 0:
        return cfg.step_limit
    return max(1, min(cfg.step_limit, start[0] + round(done * cfg.max_time_s / took)))


def lr_factor(step: int, cfg: TrainConfig, elapsed_s: float = 0.0, start: tuple[int, float] = START) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based), ``elapsed_s`` seconds of
    training after the run's start (``start``: where this invocation began, for a resumed run).

    Linear warm-up over the warm-up steps (step 0 gets 1/warmup), then: constant; linear or cosine
    decay to ``min_lr_ratio`` at the last planned step (:func:`planned_steps`; with a binding time
    budget :data:`BUDGET_MARGIN_STEPS` steps before it); or inverse-sqrt
    (``sqrt(warmup / step)``, the Transformer / T5 rule, floored at ``min_lr_ratio``).
    """
    total = planned_steps(step, cfg, elapsed_s, start)
    warm = cfg.warmup_steps if cfg.warmup_steps >= 0 else total // 10
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "inverse_sqrt":
        return max(floor, math.sqrt(max(warm, 1) / max(step + 1, 1)))
    end = total
    if cfg.max_time_s > 0 and total < cfg.step_limit:  # the budget binds: finish the decay a little early
        end = max(warm + 1, total - BUDGET_MARGIN_STEPS)
    progress = min(1.0, (step - warm) / max(1, end - warm))
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def seq_len_at(step: int, cfg: TrainConfig) -> int:
    """Sequence length for step ``step``: ``seq_len``, then ``long_seq_len`` from
    ``long_seq_len_start · max_steps`` on (BERT: 128 for 90% of the steps, then 512). The switch
    follows ``max_steps`` also under a time budget (which then needs ``max_steps`` given: validate)."""
    if cfg.long_seq_len and step >= math.ceil(cfg.long_seq_len_start * cfg.step_limit):
        return cfg.long_seq_len
    return cfg.seq_len
