"""Preparatory steps are silent when quick and show a live bar when slow, also before their first
item is done (a tokenizer trainer reading, a worker pool starting)."""

from __future__ import annotations

import io
import time

from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.progress import LiveBar
from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer


def test_a_quick_step_prints_nothing():
    out = io.StringIO()
    with LiveBar("quick", unit="doc", file=out, delay=0.5) as bar:
        for _ in bar.counted(range(100)):
            pass
    assert out.getvalue() == ""


def test_a_slow_step_shows_progress_before_its_first_item_and_ends_its_line():
    out = io.StringIO()
    with LiveBar("slow", unit="doc", file=out, delay=0.2) as bar:
        deadline = time.monotonic() + 10.0  # no update yet: the bar still appears, redrawn
        while out.getvalue().count("\r") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        shown_before_first_item = out.getvalue()
        bar.update(3)
    assert "slow: 0doc" in shown_before_first_item
    assert shown_before_first_item.count("\r") >= 2  # redrawn, not drawn once
    assert out.getvalue().endswith("\n") and "3doc" in out.getvalue()


def test_disabled_prints_nothing_and_starts_no_thread():
    out = io.StringIO()
    bar = LiveBar("off", file=out, delay=0.0, enabled=False)
    assert bar._thread is None
    time.sleep(0.1)
    bar.close()
    assert out.getvalue() == ""


def test_tokenizer_training_on_a_small_corpus_is_silent(capsys):
    train_tokenizer(embedded_corpus()[:20], TokenizerConfig(kind="bpe", vocab_size=300), progress=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
