"""DeepSpeed config generation / passthrough and the batch arithmetic check (no ranks needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ptft_fast.train.config import TrainConfig, TrainConfigError
from ptft_fast.train.deepspeed_config import DeepSpeedOptions, build_config
from ptft_fast.train.ds_launch import EXIT_LOST_RANK, launch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_generated_config(stage):
    cfg = TrainConfig(micro_batch_size=4, grad_accum_steps=3, precision="bf16", max_grad_norm=0.5)
    ds = build_config(DeepSpeedOptions(zero_stage=stage), cfg, world_size=2)
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == stage and ds["bf16"] == {"enabled": True}
    assert "fp16" not in ds


def test_fp16_uses_the_dynamic_loss_scaler():
    cfg = TrainConfig(precision="fp16", init_loss_scale=2.0**12, loss_scale_window=50)
    fp16 = build_config(DeepSpeedOptions(zero_stage=2), cfg, 1)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0
    assert fp16["initial_scale_power"] == 12 and fp16["loss_scale_window"] == 50


def test_offload_sections():
    opts = DeepSpeedOptions(zero_stage=3, offload_optimizer="cpu", offload_params="nvme", nvme_path="/nv")
    zero = build_config(opts, TrainConfig(), 1)["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"] == {"device": "nvme", "pin_memory": False, "nvme_path": "/nv"}


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (DeepSpeedOptions(zero_stage=2, offload_params="cpu"), "--offload-params needs --zero-stage 3"),
        (DeepSpeedOptions(config="x.json", zero_stage=2), "contradictory"),
        (DeepSpeedOptions(zero_stage=1, offload_optimizer="disk"), "cpu or nvme"),
    ],
)
def test_bad_options_are_named(opts, match):
    with pytest.raises(TrainConfigError, match=match):
        opts.validate()


@pytest.mark.parametrize("name", ["ds_zero1", "ds_zero2", "ds_zero3", "ds_zero3_offload"])
def test_example_configs_pass_through(name):
    cfg = TrainConfig(micro_batch_size=8, grad_accum_steps=2, precision="bf16")
    ds = build_config(DeepSpeedOptions(config=str(CONFIGS / f"{name}.json")), cfg, world_size=4)
    assert ds["train_batch_size"] == 64 and ds["bf16"]["enabled"] is True
    assert ds["fp16"]["enabled"] is False and ds["gradient_clipping"] == cfg.max_grad_norm


def test_batch_arithmetic_error_names_every_term(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                                "train_batch_size": 30}))  # fmt: skip
    cfg = TrainConfig(micro_batch_size=4, grad_accum_steps=2)
    with pytest.raises(
        TrainConfigError, match=r"\(4\) × gradient_accumulation_steps \(2\) × world size \(2\) = 16"
    ):
        build_config(DeepSpeedOptions(config=str(path)), cfg, world_size=2)


def test_json_contradicting_the_run_is_an_error(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "bf16": {"enabled": True}}))
    with pytest.raises(TrainConfigError, match="enables"):
        build_config(DeepSpeedOptions(config=str(path)), TrainConfig(micro_batch_size=8), 1)
    with pytest.raises(
        TrainConfigError, match="train_micro_batch_size_per_gpu=8 but the run has micro_batch_size=4"
    ):
        build_config(DeepSpeedOptions(config=str(path)), TrainConfig(micro_batch_size=4, precision="bf16"), 1)


def test_launcher_names_the_failed_rank(capfd):
    code = "import os, sys, time; r = int(os.environ['RANK']); time.sleep(30 * (r == 0)); sys.exit(7 * r)"
    assert launch([sys.executable, "-c", code], nproc=2, timeout_s=20) == EXIT_LOST_RANK
    assert "rank 1 (pid" in capfd.readouterr().err


def test_fp16_on_the_cpu_accelerator_is_a_named_error(monkeypatch):
    """DeepSpeed's CPU accelerator has no fp16 ("Type fp16 is not supported on your device" deep in
    initialize): the strategy says so up front, naming what works."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from ptft_fast.train.deepspeed_strategy import check_precision_supported

    check_precision_supported("bf16")
    check_precision_supported("fp32")
    with pytest.raises(
        TrainConfigError, match=r"precision='fp16' is not supported .*cpu.*\['fp32', 'bf16'\]"
    ):
        check_precision_supported("fp16")
