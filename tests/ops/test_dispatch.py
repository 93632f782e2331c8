"""Backend selection: per call, context manager, PTFT_BACKEND, auto per device, clear errors."""

import os
import subprocess
import sys

import pytest
import torch

from ptft_fast import ops
from ptft_fast.ops import dispatch


@pytest.fixture
def spy_backend(monkeypatch):
    """Registers a recording 'triton' implementation of layer_norm and marks triton available."""
    calls = []

    def fake(x, *args, **kwargs):
        calls.append(x.shape)
        return x

    monkeypatch.setitem(
        dispatch._REGISTRY, "layer_norm", {**dispatch._REGISTRY["layer_norm"], "triton": fake}
    )
    monkeypatch.setitem(dispatch._AVAILABLE, "triton", (True, ""))
    monkeypatch.setattr(dispatch, "_EXPLICIT_CACHE", {})
    monkeypatch.setattr(dispatch, "_AUTO_CACHE", {})
    return calls


def test_explicit_backend_per_call(spy_backend):
    x = torch.randn(2, 4)
    ops.layer_norm(x, None, backend="triton")
    assert spy_backend == [x.shape]
    ops.layer_norm(x, None, backend="torch")
    assert len(spy_backend) == 1


def test_context_manager_sets_and_restores_default(spy_backend):
    x = torch.randn(2, 4)
    with ops.use_backend("triton"):
        assert ops.current_backend() == "triton"
        ops.layer_norm(x, None)
        ops.layer_norm(x, None, backend="torch")  # the argument wins over the context
    assert ops.current_backend() == "auto"
    ops.layer_norm(x, None)
    assert len(spy_backend) == 1


def test_auto_uses_torch_reference_on_cpu(spy_backend):
    ops.layer_norm(torch.randn(2, 4), None, backend="auto")
    assert spy_backend == []
    assert dispatch._AUTO_CACHE[("layer_norm", "cpu")] is dispatch._REGISTRY["layer_norm"]["torch"]


def test_auto_prefers_recorded_fastest_backend_on_cuda(monkeypatch, tmp_path):
    table = tmp_path / "auto.json"
    table.write_text('{"cuda": {"attention": ["cuda", "triton"]}}')
    monkeypatch.setattr(dispatch, "_AUTO_TABLE_PATH", table)
    assert dispatch._auto_order("attention", "cuda") == ["cuda", "triton", "torch"]
    assert dispatch._auto_order("layer_norm", "cuda") == ["triton", "cuda", "torch"]
    assert dispatch._auto_order("attention", "cpu") == ["torch"]


def test_unavailable_backend_says_what_is_missing():
    with pytest.raises(dispatch.BackendUnavailableError, match=r"'cuda' is unavailable: .*ptft_fast\._C"):
        ops.layer_norm(torch.randn(2, 4), None, backend="cuda")


def test_compiled_backend_on_cpu_tensors_is_refused(spy_backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(dispatch.BackendUnavailableError, match="runs on CUDA tensors"):
        ops.layer_norm(torch.randn(2, 4), None, backend="triton")


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"), ops.use_backend("fastest"):
        pass


def _run(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_env_variable_sets_the_default_backend():
    out = _run("import ptft_fast.ops as o; print(o.current_backend())", PTFT_BACKEND="torch")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


def test_bad_env_variable_is_reported():
    out = _run("import ptft_fast", PTFT_BACKEND="gpu")
    assert out.returncode != 0
    assert "PTFT_BACKEND" in out.stderr and "'gpu'" in out.stderr


def test_resolution_is_cached_not_probed_per_call(monkeypatch):
    probes = []
    real = dispatch._probe
    monkeypatch.setattr(dispatch, "_AVAILABLE", {})
    monkeypatch.setattr(dispatch, "_EXPLICIT_CACHE", {})
    monkeypatch.setattr(dispatch, "_probe", lambda name: probes.append(name) or real(name))
    for _ in range(5):
        ops.layer_norm(torch.randn(2, 4), None, backend="torch")
    assert probes == ["torch"]


def test_registered_lists_every_op_on_the_torch_backend():
    reg = ops.registered()
    for op in ("layer_norm", "attention", "linear_cross_entropy", "lora_linear"):
        assert "torch" in reg[op]
