"""ptft_fast.utils.device: names and peak-table lookup (the table the MFU and %-of-peak columns use)."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.utils import device as dev


@pytest.mark.parametrize(
    ("gpu_name", "key"),
    [
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
    ],
)
def test_gpu_name_picks_the_most_specific_peak_row(monkeypatch, gpu_name, key):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu_name)
    assert dev.device_peaks(torch.device("cuda", 0)) is dev.DEVICE_PEAKS[key]


def test_unknown_gpu_and_cpu_have_no_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert dev.device_peaks(torch.device("cuda", 0)) is None
    assert dev.device_peaks(torch.device("cpu")) is None


def test_cpu_name_carries_the_model_and_core_count():
    name = dev.device_name(torch.device("cpu"))
    assert name.startswith("CPU ") and dev.cpu_model() in name and "cores)" in name
    assert dev.cpu_model().strip()


def test_peak_rows_are_ordered_most_specific_first():
    """A key that contains an earlier key's text would never be reached (substring match)."""
    keys = list(dev.DEVICE_PEAKS)
    for i, later in enumerate(keys):
        for earlier in keys[:i]:
            assert earlier not in later, f"{later!r} is shadowed by the earlier {earlier!r}"
