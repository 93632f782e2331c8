"""What a device is called and how fast it can go: used for MFU in training summaries and for the
%-of-peak columns of the benchmarks."""

from __future__ import annotations

import functools
import os
import platform

import torch

# Dense peak throughput (TFLOP/s, no sparsity) and memory bandwidth (GB/s) from vendor data sheets.
# Keys are matched as substrings of torch.cuda.get_device_name(), most specific first.
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "tf32": 494.0, "gbps": 4800.0},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0, "tf32": 378.0, "gbps": 2000.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "tf32": 494.0, "gbps": 3350.0},
    "A100-SXM4-80GB": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "tf32": 156.0, "gbps": 2039.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "tf32": 156.0, "gbps": 1555.0},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6, "tf32": 183.0, "gbps": 864.0},
    "A10G": {"bfloat16": 125.0, "float16": 125.0, "float32": 31.2, "tf32": 62.5, "gbps": 600.0},
    "RTX 4090": {"bfloat16": 165.0, "float16": 165.0, "float32": 82.6, "tf32": 82.6, "gbps": 1008.0},
}


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on GPU; ``CPU <model> (<n> cores)`` on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({os.cpu_count()} cores)"


def device_peaks(device: torch.device) -> dict[str, float] | None:
    """Peak table entry for ``device``, or None when unknown (CPUs: no % of peak is reported)."""
    if device.type != "cuda":
        return None
    name = device_name(device)
    for key, peaks in DEVICE_PEAKS.items():
        if key in name:
            return peaks
    return None
