"""Progress for preparatory steps: silent when a step is quick, visible when it is not.

:class:`LiveBar` is a tqdm bar that shows nothing for the first :data:`DELAY_S` seconds (a quick
step prints nothing) and is then redrawn every second by a thread, also between updates: a step
whose first item takes a minute (a worker pool starting, a tokenizer trainer reading the corpus
before its first merge) still shows that it is working and for how long.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator

from tqdm import tqdm

DELAY_S = 3.0  # seconds before a bar appears
REDRAW_S = 1.0


class LiveBar:
    """``with LiveBar("train tokenizer", unit="doc") as bar: ... bar.update(n)``.

    total: known number of items (None: a counter). enabled=False: nothing at all.
    """

    def __init__(
        self,
        desc: str,
        *,
        unit: str = "it",
        total: int | None = None,
        enabled: bool = True,
        delay: float = DELAY_S,
        file=None,
    ) -> None:
        self.bar = tqdm(
            desc=desc, unit=unit, total=total, disable=not enabled, delay=delay, file=file or sys.stderr
        )
        self._stop = threading.Event()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._redraw, args=(delay,), daemon=True)
            self._thread.start()

    def _redraw(self, delay: float) -> None:
        if self._stop.wait(delay):
            return
        while not self._stop.is_set():
            with self.bar.get_lock():
                self.bar.refresh(nolock=True)
                self.bar.last_print_t = self.bar._time()  # counts as shown: close() ends the line
            self._stop.wait(REDRAW_S)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_description(self, desc: str) -> None:
        self.bar.set_description(desc, refresh=False)

    def counted(self, items: Iterable) -> Iterator:
        """``items``, counting each one on the bar as it is taken."""
        for item in items:
            self.bar.update(1)
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()

    def __enter__(self) -> LiveBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
