"""Batches built ahead on a thread: the same batches in the same order, the state of the batches
consumed (not those queued), errors raised in the training thread, any batch keys carried."""

import json
import threading
import time

import pytest
import torch

from ptft_fast.data.prefetch import PrefetchingSource
from ptft_fast.data.shards import TokenShards
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import BatchSource
from ptft_fast.train.trainer import Trainer


def _source(run_data, objective="mlm", kind="wordpiece"):
    shards = TokenShards(run_data(kind) / "data" / "train")
    return BatchSource(objective, shards, shards.tokenizer(), TrainConfig(objective=objective), seed=3)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# a schedule with a change of row length and of batch size part-way (the queue is rebuilt)
PLAN = [(4, 32)] * 5 + [(4, 64)] * 3 + [(2, 64)] * 2 + [(4, 32)] * 2


@pytest.mark.parametrize(("objective", "kind"), [("mlm", "wordpiece"), ("span", "unigram"), ("clm", "bpe")])
def test_same_batches_and_consumed_state(run_data, objective, kind):
    plain = _source(run_data, objective, kind)
    want, states = [], []
    for req in PLAN:
        want.append(plain.next(*req))
        states.append(json.dumps(plain.state_dict()))
    ahead = PrefetchingSource(_source(run_data, objective, kind), depth=3)
    for i, req in enumerate(PLAN):
        assert _equal(ahead.next(*req), want[i]), i
        assert json.dumps(ahead.state_dict()) == states[i], i  # consumed, whatever was built ahead
    # a source restored from the consumed state continues with the next batch
    ahead = PrefetchingSource(_source(run_data, objective, kind), depth=3)
    for req in PLAN[:6]:
        ahead.next(*req)
    restored = _source(run_data, objective, kind)
    restored.load_state_dict(json.loads(json.dumps(ahead.state_dict())))
    assert _equal(restored.next(*PLAN[6]), want[6])
    ahead.close()


class _Recorder:
    """A source of numbered batches with extra keys; records how many batches it built."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.made, self.fail_at, self.built = 0, fail_at, threading.Event()

    def next(self, batch_size, seq_len):
        if self.made == self.fail_at:
            raise RuntimeError(f"bad document at batch {self.made}")
        self.made += 1
        if self.made >= 4:
            self.built.set()
        return {
            "input_ids": torch.full((batch_size, seq_len), self.made),
            "cu_seqlens": torch.tensor([0, seq_len], dtype=torch.int32),
            "max_seqlen": torch.tensor(seq_len),
        }

    def state_dict(self):
        return {"made": self.made}

    def load_state_dict(self, state):
        self.made = state["made"]


def test_worker_builds_ahead_but_state_is_the_consumed_one():
    src = _Recorder()
    ahead = PrefetchingSource(src, depth=3)
    b = ahead.next(2, 5)
    assert b["input_ids"][0, 0] == 1 and b["cu_seqlens"].tolist() == [0, 5] and b["max_seqlen"] == 5
    assert src.built.wait(10)  # batches 2..4 were built while nobody asked
    assert ahead.state_dict() == {"made": 1}
    assert [int(ahead.next(2, 5)["input_ids"][0, 0]) for _ in range(3)] == [2, 3, 4]
    ahead.close()
    assert src.state_dict() == {"made": 4}  # closing rewinds the source to what was consumed
    assert int(ahead.next(2, 5)["input_ids"][0, 0]) == 5
    ahead.load_state_dict({"made": 1})
    assert int(ahead.next(2, 5)["input_ids"][0, 0]) == 2
    ahead.close()


def test_worker_error_is_raised_in_the_training_thread():
    ahead = PrefetchingSource(_Recorder(fail_at=2), depth=2)
    assert int(ahead.next(1, 1)["input_ids"][0, 0]) == 1
    assert int(ahead.next(1, 1)["input_ids"][0, 0]) == 2
    with pytest.raises(RuntimeError, match="bad document at batch 2"):
        ahead.next(1, 1)
    assert ahead._thread is None
    with pytest.raises(ValueError, match="depth"):
        PrefetchingSource(_Recorder(), depth=0)


def test_trainer_with_prefetch_equals_without(new_run, tiny):
    """Same losses and the same saved data position with batches built ahead as without."""
    runs = {}
    for depth in (0, 2):
        out = new_run(name=f"p{depth}")
        cfg = TrainConfig(**{**tiny, "out": str(out), "prefetch": depth, "grad_accum_steps": 2})
        trainer = Trainer(cfg)
        losses = [trainer.train_step().loss for _ in range(5)]
        runs[depth] = (losses, json.dumps(trainer.source.state_dict()))
        if depth:
            trainer.source.close()
    assert runs[0] == runs[2]


def test_closing_an_idle_source_is_harmless():
    ahead = PrefetchingSource(_Recorder(), depth=1)
    ahead.close()
    ahead.next(1, 1)
    time.sleep(0.01)
    ahead.close()
    ahead.close()


@pytest.mark.gpu
def test_batches_are_pinned_and_copied_to_cuda(run_data):
    from ptft_fast.train.trainer import to_device

    ahead = PrefetchingSource(_source(run_data), depth=2, pin_memory=True)
    batch = ahead.next(4, 32)
    assert all(v.is_pinned() for v in batch.values())
    on_gpu = to_device(batch, torch.device("cuda"))
    torch.cuda.synchronize()
    assert all(v.is_cuda and torch.equal(v.cpu(), batch[k]) for k, v in on_gpu.items())
    ahead.close()
