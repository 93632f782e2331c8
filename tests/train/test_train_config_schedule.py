"""TrainConfig merging/validation and the learning-rate / sequence-length schedules."""

import itertools
import math

import pytest

from ptft_fast.train.config import TrainConfig, TrainConfigError, merge, parse_sets
from ptft_fast.train.schedule import lr_factor, planned_steps, seq_len_at


def test_warmup_then_cosine_to_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)  # half-way: floor + (1 - floor) / 2
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    f = [lr_factor(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(f))  # monotone decay


def test_linear_inverse_sqrt_constant_and_default_warmup():
    lin = TrainConfig(max_steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(60, lin) == pytest.approx(0.5)
    assert lr_factor(110, lin) == pytest.approx(0.0)
    inv = TrainConfig(max_steps=1000, warmup_steps=100, schedule="inverse_sqrt", min_lr_ratio=0.0)
    assert lr_factor(399, inv) == pytest.approx(math.sqrt(100 / 400))
    const = TrainConfig(max_steps=50, warmup_steps=0, schedule="constant")
    assert {lr_factor(s, const) for s in range(50)} == {1.0}
    assert TrainConfig(max_steps=200).warmup == 20  # -1 → 10% of max_steps


def test_seq_len_schedule_bert_style():
    cfg = TrainConfig(max_steps=100, seq_len=128, long_seq_len=512, long_seq_len_start=0.9)
    lengths = [seq_len_at(s, cfg) for s in range(100)]
    assert lengths.count(128) == 90 and lengths[90:] == [512] * 10
    assert {seq_len_at(s, TrainConfig(max_steps=100)) for s in range(100)} == {128}


def test_merge_coerces_and_rejects_unknown_keys():
    cfg = merge(
        TrainConfig(), parse_sets(["lr=3e-4", "max_steps=1e3", "progress=false", "data=none"]), "--set"
    )
    assert (cfg.lr, cfg.max_steps, cfg.progress, cfg.data) == (3e-4, 1000, False, None)
    with pytest.raises(TrainConfigError, match=r"unknown key\(s\) \['bogus', 'lr_max'\] in run.yaml"):
        merge(TrainConfig(), {"lr_max": 1, "bogus": 2}, "run.yaml")
    with pytest.raises(TrainConfigError, match="max_steps must be int"):
        merge(TrainConfig(), {"max_steps": "ten"}, "--set")
    with pytest.raises(TrainConfigError, match="key=value"):
        parse_sets(["lr"])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"objective": "mlmx"}, "objective must be one of"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"max_steps": 10, "warmup_steps": 10}, r"warmup_steps \(10\) must be < max_steps"),
        ({"seq_len": 128, "long_seq_len": 64}, "long_seq_len"),
        ({"init_loss_scale": 1024.0}, "contradictory"),
        (
            {"objective": "span", "cross_document_attention": True},
            r"cross_document_attention is a clm/prefix-lm/mlm setting .* 'span'",
        ),
        ({"cross_document_attention": False, "compile": True}, "cannot be combined with compile=true"),
        ({"objective": "clm", "prefix_fraction": 0.5}, r"prefix_fraction is a prefix-lm setting .* 'clm'"),
        ({"prefix_lm_causal_share": 0.5}, r"prefix_lm_causal_share is a prefix-lm setting .* 'mlm'"),
        ({"objective": "prefix-lm", "prefix_fraction": 1.0}, r"prefix_fraction must be in \[0, 1\)"),
    ],
)
def test_validate_names_the_key(kw, match):
    with pytest.raises(TrainConfigError, match=match):
        TrainConfig(**kw).validate()


def test_time_budget_schedule_runs_over_the_steps_that_fit():
    """max_time_s=100 with a generous max_steps: at 1 step/s the schedule plans 100 steps, so
    warm-up ends at step 10 and the cosine reaches its floor at step 98 — two steps before the
    budget, so that a slow last step still trains at the floor (not at 100,000)."""
    cfg = TrainConfig(max_steps=100_000, max_time_s=100, schedule="cosine", min_lr_ratio=0.1)
    assert planned_steps(0, cfg, 0.0) == 100_000  # nothing measured yet
    assert planned_steps(10, cfg, 10.0) == 100 and planned_steps(10, cfg, 5.0) == 200
    assert lr_factor(4, cfg, 4.0) == pytest.approx(0.5)  # warm-up: 10 % of the 100 planned steps
    assert lr_factor(10, cfg, 10.0) == pytest.approx(1.0)
    assert lr_factor(54, cfg, 54.0) == pytest.approx(0.55)  # half-way through the decay (10 → 98)
    assert lr_factor(97, cfg, 97.0) > 0.1 + 1e-6
    assert lr_factor(98, cfg, 98.0) == pytest.approx(0.1) and lr_factor(100, cfg, 100.0) == pytest.approx(0.1)
    # explicit warm-up stays in steps; max_steps still caps the plan; no budget: steps only
    assert lr_factor(29, TrainConfig(**{**cfg.to_dict(), "warmup_steps": 30}), 29.0) == pytest.approx(1.0)
    assert planned_steps(10, TrainConfig(max_steps=50, max_time_s=100), 10.0) == 50
    assert lr_factor(55, TrainConfig(max_steps=100, warmup_steps=10), 1e9) == pytest.approx(0.55)


def test_a_time_budget_without_max_steps_is_not_capped_by_the_default_steps(tmp_path):
    """max_steps not given (0 = auto): 300 steps without a time budget, no cap with one — a
    100 s budget at 10 steps/s plans 1,000 steps (the old default cap planned 300 and ended the
    run after 30 s) with warm-up over the first 100. max_steps given still caps the budget.
    YAML, --set and the DeepSpeed rank's parser give the same plan (one rule, in TrainConfig)."""
    import argparse

    from ptft_fast.cli import pretrain
    from ptft_fast.train.config import DEFAULT_MAX_STEPS, NO_STEP_CAP, load_yaml, merge, parse_sets

    assert TrainConfig().step_limit == DEFAULT_MAX_STEPS == 300 and TrainConfig().warmup == 30
    cfg = TrainConfig(max_time_s=100, schedule="cosine", min_lr_ratio=0.1)
    cfg.validate()
    assert cfg.step_limit == NO_STEP_CAP
    assert planned_steps(100, cfg, 10.0) == 1000
    assert lr_factor(49, cfg, 4.9) == pytest.approx(0.5)  # warm-up: 10 % of the 1,000 planned
    assert lr_factor(998, cfg, 99.8) == pytest.approx(0.1)  # the decay ends with the budget
    assert planned_steps(100, TrainConfig(max_steps=300, max_time_s=100), 10.0) == 300
    # the same from `ptft pretrain --config` / `--set` and from a DeepSpeed rank's --set merge
    (tmp_path / "run.yaml").write_text("max_time_s: 100\n")
    parser = argparse.ArgumentParser()
    pretrain.add_parser(parser.add_subparsers())
    for argv in (["--config", str(tmp_path / "run.yaml")], ["--set", "max_time_s=100"]):
        assert pretrain.build_config(parser.parse_args(["pretrain", *argv])).step_limit == NO_STEP_CAP
    assert merge(TrainConfig(), parse_sets(["max_time_s=100"]), "--set").step_limit == NO_STEP_CAP
    assert merge(TrainConfig(), load_yaml(tmp_path / "run.yaml"), "run.yaml").step_limit == NO_STEP_CAP
    with pytest.raises(TrainConfigError, match=r"long_seq_len switches .* give max_steps too"):
        TrainConfig(max_time_s=100, seq_len=128, long_seq_len=512).validate()
    TrainConfig(max_time_s=100, max_steps=1000, seq_len=128, long_seq_len=512).validate()


def test_resumed_time_budget_plans_from_where_the_invocation_began():
    """The budget is per invocation: a run that used its 100 s for 100 steps and is resumed plans
    100 + the steps its own 100 s fit (at its own rate), and trains above the floor in between;
    from the cumulative rate (110 steps in 110 s) it would plan 100 steps: all at the floor."""
    cfg = TrainConfig(max_steps=100_000, max_time_s=100, schedule="cosine", min_lr_ratio=0.1)
    start = (100, 100.0)  # resumed at step 100, 100 s into the run
    assert planned_steps(100, cfg, 100.0, start) == 100_000  # nothing measured in this invocation
    assert planned_steps(110, cfg, 110.0, start) == 200  # 10 steps in 10 s: 100 more fit
    assert planned_steps(110, cfg, 120.0, start) == 150  # a slower machine now: 2 s a step
    assert planned_steps(110, cfg, 110.0) == 100  # the cumulative rate: the run is "over"
    # warm-up 20 (10 % of 200), cosine to the floor at 198: step 109 is half-way, 197 near the floor
    assert lr_factor(109, cfg, 109.0, start) == pytest.approx(0.55)
    assert lr_factor(198, cfg, 198.0, start) == pytest.approx(0.1)
