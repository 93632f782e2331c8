"""Batches built ahead, off the training thread, with exact resume.

:class:`PrefetchingSource` wraps a batch source — ``next(batch_size, seq_len)`` returning a dict of
tensors, ``state_dict()`` / ``load_state_dict()`` — and builds its next ``depth`` batches on a
background thread into a bounded queue while the model computes. The batches come out in exactly
the order the wrapped source gives them, whatever keys they carry (``cu_seqlens``, prefix lengths,
0-dim tensors: the dict passes through untouched).

Resume: every queued batch carries the source's state *after* it, and ``state_dict()`` returns
the state after the last batch handed out by ``next`` — the batches consumed, never the ones built
ahead — so a checkpoint restores to the batch after the last one trained on.

A request with another ``(batch_size, seq_len)`` than the queued batches were built for (the
sequence-length schedule) discards the queue and rebuilds from the consumed state: the same
batches as without prefetching. With ``pin_memory`` (CUDA) the worker pins each batch, so the
training thread's host-to-device copy can be ``non_blocking``.

A thread, not a process: the collators are numpy/torch array work (≈1 ms for a 64×64 MLM batch,
see ``benchmarks/bench_data_path.py``), which needs no second interpreter, and the state after
each batch is read in the same address space.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from dataclasses import dataclass

_LIVE: weakref.WeakSet = weakref.WeakSet()  # sources whose worker may be running


@atexit.register
def _stop_workers() -> None:
    """Stop every worker before the interpreter finalizes: a daemon thread still inside torch
    when the process exits (a script that raised out of ``train_step``) can abort it (SIGABRT)."""
    for source in list(_LIVE):
        source.close(restore=False)


@dataclass
class _Failure:
    error: BaseException


class PrefetchingSource:
    """``next``/``state_dict``/``load_state_dict`` of ``source``, with batches built ahead."""

    def __init__(self, source, depth: int = 2, *, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (batches built ahead), got {depth}")
        self.source, self.depth, self.pin_memory = source, depth, pin_memory
        self._consumed = source.state_dict()
        self._request: tuple | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self.wait_s = 0.0  # total time next() waited for the worker

    # ------------------------------------------------------------ worker
    def _work(self, request: tuple, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                batch = self.source.next(*request)
                if self.pin_memory:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                self._put(out, stop, (batch, self.source.state_dict()))
        except BaseException as exc:  # handed to the training thread, raised there
            self._put(out, stop, _Failure(exc))

    @staticmethod
    def _put(out: queue.Queue, stop: threading.Event, item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _start(self, request: tuple) -> None:
        self.source.load_state_dict(self._consumed)
        self._request, self._queue, self._stop = request, queue.Queue(self.depth), threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(request, self._queue, self._stop), name="ptft-prefetch", daemon=True
        )
        self._thread.start()
        _LIVE.add(self)

    def close(self, *, restore: bool = True) -> None:
        """Stop the worker and drop the batches built ahead; the source is left at the consumed
        state (``next`` starts a new worker). ``restore=False``: at exit, only stop."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = self._queue = None
        _LIVE.discard(self)
        if restore:
            self.source.load_state_dict(self._consumed)

    # ------------------------------------------------------------ the source interface
    def next(self, batch_size: int, seq_len: int) -> dict:
        request = (batch_size, seq_len)
        if request != self._request:
            self.close()
        if self._thread is None:
            self._start(request)
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        batch, self._consumed = item
        return batch

    def state_dict(self) -> dict:
        """The wrapped source's state after the last batch ``next`` returned."""
        return self._consumed

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.source.load_state_dict(state)  # checked now, so a bad state fails here
        self._consumed = self.source.state_dict()
