"""ZeRO-1/2/3 on 2 ranks × micro-batch b train exactly like one process with batch 2b (fp32)."""

from __future__ import annotations

import dataclasses

import pytest
from ds_testlib import BASE, run_ds, sets, train_losses

pytestmark = pytest.mark.distributed


def single_process_losses(out) -> list[float]:
    """The reference: TorchStrategy, one process, micro-batch 2b."""
    from ptft_fast.train.config import TrainConfig, merge
    from ptft_fast.train.trainer import Trainer

    cfg = merge(TrainConfig(), {**BASE, "out": str(out)}, "test")
    cfg = dataclasses.replace(cfg, micro_batch_size=2 * BASE["micro_batch_size"])
    trainer = Trainer(cfg)
    return [trainer.train_step().loss for _ in range(cfg.max_steps)]


@pytest.fixture(scope="module")
def reference(run_data, tmp_path_factory):
    import shutil

    out = tmp_path_factory.mktemp("single")
    shutil.copytree(run_data, out / "data", dirs_exist_ok=True)
    return single_process_losses(out)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "2", "3", "3-offload"])
def test_two_ranks_match_single_process(stage, reference, new_run, request):
    if stage == "3":  # the shared ZeRO-3 run (every parameter partitioned), also used by resume
        out = request.getfixturevalue("zero3_full")
    else:
        out = new_run(f"zero{stage}")
        ds = ["--zero-stage", stage]
        if stage == "3-offload":  # optimizer step and parameters on the CPU (DeepSpeed offload path)
            ds = ["--zero-stage", "3", "--offload-optimizer", "cpu", "--offload-params", "cpu"]
        proc = run_ds(out, [*ds, *sets(out=out)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    losses = train_losses(out)
    assert sorted(losses) == [1, 2, 3, 4]
    got = [losses[s] for s in sorted(losses)]
    assert got == pytest.approx(reference, abs=1e-5, rel=0), (got, reference)
    assert got[-1] < got[0]  # it trains


@pytest.mark.slow
def test_bf16_zero2_trains_close_to_fp32(reference, new_run):
    """precision=bf16 → DeepSpeed bf16 mode (bf16 weights and compute, fp32 master weights)."""
    out = new_run("bf16")
    proc = run_ds(out, ["--zero-stage", "2", *sets(out=out, precision="bf16")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = train_losses(out)
    got = [losses[s] for s in sorted(losses)]
    assert got == pytest.approx(reference, abs=0.05)  # bf16 rounding, not a different trajectory
    assert got != pytest.approx(reference, abs=1e-5)  # it really ran in bf16
