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


@pytest.mark.distributed
@pytest.mark.slow
def test_gradual_unfreezing_on_two_ranks_keeps_frozen_groups_until_their_epoch(tmp_path):
    """DeepSpeed owns the gradients, so frozen layer groups are held by a zero lr in their own
    optimizer groups (weight decay 0.1 on: a decayed frozen weight would move too)."""
    from ptft_fast.finetune import ulmfit

    proc = run_finetune(tmp_path, 2, "--unfreeze")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = task_model()
    start = model.state_dict()
    ids = {id(p): n for n, p in model.named_parameters()}
    groups = [[ids[id(p)] for p in g] for g in ulmfit.layer_groups(model)]  # bottom, layers, top
    assert len(groups) == 4
    for epoch in range(1, 5):
        snap = load_file(tmp_path / f"epoch_{epoch}.safetensors")
        live = len(groups) - epoch  # groups below this index are still frozen
        for i, group in enumerate(groups):
            moved = [n for n in group if not torch.equal(snap[n], start[n])]
            if i < live:
                assert not moved, (epoch, i, moved[:3])
            else:  # every group being trained has moved
                assert moved, (epoch, i)
