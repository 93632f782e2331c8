"""Checkpoints verify themselves: a damaged newest checkpoint is skipped (with a warning naming
the file) for the previous one; none valid is one line. ``max_time_s`` bounds one invocation; a
finished run resumed says so and writes nothing; files and folders follow the umask."""

import json
import os
import shutil
import stat

import pytest

from ptft_fast.cli import main
from ptft_fast.train import checkpoint as ckpt
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.trainer import Trainer


@pytest.fixture
def cfg(tiny):
    """cfg(out, **settings) → a tiny TrainConfig that checkpoints every 2 steps; a constant lr, so
    that runs with another max_steps take the same steps."""
    base = dict(tiny, save_every=2, schedule="constant", warmup_steps=0)
    return lambda out, **extra: TrainConfig(**{**base, "out": str(out), **extra})


def _losses(out) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _damage(path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # flip one byte, same size
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))


def test_truncated_weights_resume_from_the_previous_checkpoint_exactly(new_run, cfg):
    ref = new_run(name="ref")
    Trainer(cfg(ref, max_steps=6)).run()
    out = new_run(name="damaged")
    Trainer(cfg(out, max_steps=4)).run()
    assert ckpt.read_latest(out / "checkpoints") == "step_00000004"
    _damage(out / "checkpoints" / "step_00000004" / "model" / "model.safetensors", "truncate")
    with pytest.warns(UserWarning, match=r"step_00000002 instead: skipped step_00000004: "
                      r"model/model\.safetensors has \d+ bytes, \d+ expected \(truncated\)"):  # fmt: skip
        trainer = Trainer(cfg(out, max_steps=6), resume="latest")
    assert trainer.step == 2
    trainer.run()
    want, got = _losses(ref), _losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert all(got[s] == want[s] for s in range(3, 7)), (got, want)
    # the damaged step-4 checkpoint was written anew when the resumed run reached step 4
    kept = sorted((out / "checkpoints").glob("step_*"))
    assert [p.name for p in kept] == ["step_00000002", "step_00000004", "step_00000006"]
    assert all(ckpt.verify(p) is None for p in kept)


@pytest.mark.parametrize(
    ("name", "how", "said"),
    [
        (
            "state/optimizer.safetensors",
            "empty",
            r"state/optimizer\.safetensors has 0 bytes, \d+ expected \(empty\)",
        ),
        ("state/trainer.json", "truncate", r"state/trainer\.json has \d+ bytes"),
        ("state/rng.safetensors", "flip", r"state/rng\.safetensors does not match its checksum"),
        ("model/config.json", "delete", r"model/config\.json is missing"),
    ],
)
def test_each_damaged_file_is_named(new_run, cfg, name, how, said):
    out = new_run()
    Trainer(cfg(out, max_steps=4)).run()
    path = out / "checkpoints" / "step_00000004" / name
    path.unlink() if how == "delete" else _damage(path, how)
    with pytest.warns(UserWarning, match=said):
        assert Trainer(cfg(out, max_steps=6), resume="latest").step == 2


def test_no_valid_checkpoint_is_one_line_naming_each(new_run, cfg):
    out = new_run()
    Trainer(cfg(out, max_steps=4)).run()
    for step in ("step_00000002", "step_00000004"):
        _damage(out / "checkpoints" / step / "model" / "model.safetensors", "empty")
    with pytest.raises(ckpt.ResumeError) as err:
        Trainer(cfg(out, max_steps=6), resume="latest")
    msg = str(err.value)
    assert "\n" not in msg
    assert "step_00000004: model/model.safetensors has 0 bytes" in msg
    assert "step_00000002: model/model.safetensors has 0 bytes" in msg


def test_max_time_s_bounds_one_invocation_not_the_run(new_run, cfg):
    out = new_run()
    Trainer(cfg(out, max_steps=4, max_time_s=1e-9)).run()
    assert max(_losses(out)) == 1  # stopped by the budget after one step
    # the run so far has used more than the budget the resumed invocation gets
    latest = out / "checkpoints" / ckpt.read_latest(out / "checkpoints")
    state_file = latest / "state" / "trainer.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(dict(state, elapsed_s=1e6)))
    ckpt.write_manifest(latest)
    Trainer(cfg(out, max_steps=4, max_time_s=3600), resume="latest").run()
    assert sorted(_losses(out)) == [1, 2, 3, 4]


def _snapshot(root) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_resuming_a_finished_run_says_so_and_writes_nothing(new_run, tiny, capsys):
    out = new_run()
    sets = [x for k, v in {**tiny, "max_steps": 2, "save_every": 1}.items() for x in ("--set", f"{k}={v}")]
    argv = ["pretrain", "--out", str(out), *sets]
    assert main(argv) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*argv, "--resume", "latest"]) == 0
    said = capsys.readouterr().out
    assert "had already finished (step 2 of max_steps=2)" in said and "final train loss" not in said
    assert _snapshot(out) == before


def test_run_files_and_folders_follow_the_umask(new_run, cfg, tiny):
    out = new_run()
    shutil.rmtree(out / "data")  # built by this run, under this umask
    old = os.umask(0o027)
    try:
        Trainer(cfg(out, max_steps=2, save_every=1, plot=True)).run()
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o750 if (out / p).is_dir() else 0o640)}
    assert not wrong, wrong
    assert "checkpoints/step_00000002/model/model.safetensors" in modes and "final/tokenizer.json" in modes
