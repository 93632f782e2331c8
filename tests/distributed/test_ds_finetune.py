"""The fine-tuning loop on 2 DeepSpeed ranks (CPU accelerator, gloo) trains like one process: the
same losses step by step and the same final weights (ZeRO-1 and ZeRO-2, accumulation included,
micro-batches split across the ranks); its checkpoints are the engine's."""

from __future__ import annotations

import pytest
import torch
from ds_finetune_worker import run, task_model
from ds_testlib import run_finetune, train_losses
from safetensors.torch import load_file


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_two_ranks_train_like_one_process(tmp_path, stage):
    want = run(tmp_path / "one", None)
    two = tmp_path / "two"
    proc = run_finetune(two, stage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert train_losses(two) == pytest.approx(train_losses(tmp_path / "one"), rel=1e-5)
    got = load_file(two / "final.safetensors")
    start = task_model().state_dict()
    # per element, AdamW moves a weight with a near-zero grad by ~lr·sign(grad), so the all-reduce's
    # summation order can flip single elements; the update as a whole must agree (and the losses,
    # which see every weight, agree to 1e-5 above)
    moved = torch.cat([(want[k] - start[k]).flatten() for k in want])
    diff = torch.cat([(got[k] - want[k]).flatten() for k in want])
    assert float(diff.norm()) < 1e-2 * float(moved.norm())
    assert (two / "checkpoints" / "latest").read_text().strip() == "step_00000004"
