"""Streaming generated tokens to the console as they are produced."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch


class TextStreamer:
    """Prints the decoded text of row 0 incrementally (decode the whole row, print the new suffix,
    so multi-token characters come out whole).

    Args:
        decode: token ids → text (e.g. ``tokenizers.Tokenizer.decode``).
        stop_ids: tokens that end the stream (eos); later tokens of the row are not printed.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop_ids=(), file=None):
        self.decode, self.stop_ids, self.file = decode, set(stop_ids), file or sys.stdout
        self.tokens: list[int] = []
        self.printed = ""
        self.stopped = False

    def put(self, tokens: torch.Tensor) -> None:
        """tokens: (B,) the next token of every row; only row 0 is printed."""
        if self.stopped:
            return
        tok = int(tokens.reshape(-1)[0])
        if tok in self.stop_ids:
            self.stopped = True
            return
        self.tokens.append(tok)
        text = self.decode(self.tokens)
        if text.startswith(self.printed):
            print(text[len(self.printed) :], end="", file=self.file, flush=True)
            self.printed = text

    def end(self) -> None:
        print(file=self.file, flush=True)
