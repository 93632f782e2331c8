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
