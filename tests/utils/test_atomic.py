"""ptft_fast.utils.atomic: a write either lands whole under the target name or not at all."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from ptft_fast.utils import atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_json_lands_whole_with_the_umask_mode(tmp_path):
    target = tmp_path / "sub" / "card.json"
    atomic.atomic_write_json(target, {"b": 1, "a": [2, 3]}, sort_keys=True)
    assert target.read_text() == json.dumps({"a": [2, 3], "b": 1}, indent=2) + "\n"
    assert _mode(target) == 0o666 & ~atomic.current_umask()
    assert [p.name for p in target.parent.iterdir()] == ["card.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def half_write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_with(target, half_write)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_safetensors_round_trip_and_mode(tmp_path):
    target = tmp_path / "head.safetensors"
    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    atomic.atomic_save_safetensors(target, tensors, metadata={"format": "pt"})
    back = load_file(target)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    # safetensors alone would create the file 0600; a run folder on a shared filesystem must not keep that
    assert _mode(target) == 0o666 & ~atomic.current_umask()
