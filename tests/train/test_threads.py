"""The CPU thread policy: auto gives the same choice whatever an earlier run set."""

import torch
from torch import nn

from ptft_fast.train import trainer


def test_auto_threads_do_not_depend_on_an_earlier_run(monkeypatch):
    monkeypatch.setattr(trainer, "SMALL_MODEL", 100)
    monkeypatch.setattr(trainer, "DEFAULT_THREADS", 2)
    cpu, before = torch.device("cpu"), torch.get_num_threads()
    try:
        assert trainer.set_cpu_threads(0, nn.Linear(4, 4), cpu) == 1  # 20 parameters: small
        assert trainer.set_cpu_threads(0, nn.Linear(20, 20), cpu) == 2  # large: torch's default,
        assert trainer.set_cpu_threads(3, nn.Linear(4, 4), cpu) == 3  # not the 1 set just before
    finally:
        torch.set_num_threads(before)


def test_idle_threads_hint_only_for_auto_one_thread_on_an_idle_cpu(monkeypatch):
    """Auto keeps one thread for small models (safe under load); on a CPU that looks idle the run
    says that more threads may be faster, and says nothing when the user chose, the machine is
    busy, the device is a GPU or there is one core."""
    import torch

    from ptft_fast.train import trainer

    cpu = torch.device("cpu")
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (0.3, 0.5, 0.5))
    hint = trainer.idle_threads_hint(0, 1, cpu)
    assert hint is not None and "--set cpu_threads=2" in hint and "load 0.3 on 2 cores" in hint
    assert trainer.idle_threads_hint(1, 1, cpu) is None  # the user chose one thread
    assert trainer.idle_threads_hint(0, 2, cpu) is None  # auto picked more (a large model)
    assert trainer.idle_threads_hint(0, 1, torch.device("cuda")) is None
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (1.2, 0.5, 0.5))  # busy: 0.6 a core
    assert trainer.idle_threads_hint(0, 1, cpu) is None
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert trainer.idle_threads_hint(0, 1, cpu) is None
