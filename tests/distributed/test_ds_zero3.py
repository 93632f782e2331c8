"""ZeRO-3 on 2 ranks: tied/external parameters are gathered for the fused loss, export equals the
gathered model, and save → resume continues with the losses of an uninterrupted run."""

from __future__ import annotations

import shutil

import pytest
import torch
from ds_testlib import run_ds, run_worker, sets, train_losses, zero3_config
from safetensors.torch import load_file

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_unregistered_tied_embedding_fails(new_run):
    """Without register_external_parameters the tied vocab projection reaches
    ops.linear_cross_entropy as an empty shard: the step must fail (this is what the helper fixes)."""
    out = new_run("unregistered")
    proc = run_worker("unregistered", out, zero3_config(out.parent / "z3.json"))
    assert proc.returncode != 0
    assert "rank" in proc.stderr and "exited with code" in proc.stderr
    assert "linear_cross_entropy: weight must have 2 dims, got shape (0,)" in proc.stderr


def test_export_equals_gathered_model(zero3_partial, tmp_path):
    from ptft_fast.hf import load_pretrained
    from ptft_fast.train.zero_export import export_zero

    out = zero3_partial
    gathered = load_file(out / "gathered.safetensors")
    model, _ = load_pretrained(export_zero(out / "checkpoints", tmp_path / "hf"))
    exported = model.state_dict()
    assert set(exported) == set(gathered)
    for name, t in gathered.items():
        assert t.numel() > 0, name
        torch.testing.assert_close(exported[name], t, rtol=0, atol=0, msg=name)
    hf16 = export_zero(out / "checkpoints", tmp_path / "hf16", dtype="bf16")
    assert {t.dtype for t in load_file(hf16 / "model.safetensors").values()} == {torch.bfloat16}
    bf16, _ = load_pretrained(hf16)
    for name, t in bf16.state_dict().items():
        torch.testing.assert_close(t.float(), gathered[name].to(torch.bfloat16).float(), rtol=0, atol=0)


def test_save_resume_matches_uninterrupted(zero3_full, zero3_partial, tmp_path):
    part = tmp_path / "part"
    shutil.copytree(zero3_partial, part)
    assert (part / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    z3 = part / "z3.json"
    proc = run_ds(part, ["--deepspeed", str(z3), "--resume", "latest", *sets(out=part)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = train_losses(zero3_full), train_losses(part)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == want[step], (step, got[step], want[step])


def test_trainer_final_model_equals_export(zero3_full, tmp_path):
    """The loop's final HF folder (state_dict gathered under ZeRO-3) equals the consolidated
    last checkpoint."""
    from ptft_fast.hf import load_pretrained
    from ptft_fast.train.zero_export import export_zero

    final, _ = load_pretrained(zero3_full / "final")
    exported, _ = load_pretrained(export_zero(zero3_full / "checkpoints", tmp_path / "hf"))
    want = exported.state_dict()
    for name, t in final.state_dict().items():
        torch.testing.assert_close(t, want[name], rtol=0, atol=0, msg=name)
