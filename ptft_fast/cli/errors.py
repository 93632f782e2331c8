"""The command line's error contract, in one place.

Every user mistake — a bad option value, a missing / unreadable / wrong-format file, a model of
the wrong kind for the command, a number out of range — ends the command with exit code 2 and
one line on stderr::

    ptft <cmd>: error: <what is wrong, naming the option or file and the value>

No traceback (``--debug`` shows it), nothing half-written: an output folder the command created
is removed (:func:`removed_on_error`). Validation happens before any work starts. Everything
else — a bug of ours — stays a traceback.

What counts as a user mistake (:data:`USER_ERRORS`): :class:`~ptft_fast.errors.UserInputError`
(raised by the library's layers and by the validators here), the OS's "no such file" family, and
:class:`~ptft_fast.ops.BackendUnavailableError`. The argparse ``type=`` validators below
(:func:`int_at_least`, :func:`float_in`, ...) give argparse's own one-line message. Help texts
and epilogs are the parsers' business; nothing here depends on them.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from ptft_fast.errors import UserInputError, one_line
from ptft_fast.ops import BackendUnavailableError

MAX_LINE = 600  # characters of an error line; the rest is shown with --debug


class UsageError(UserInputError):
    """A bad command-line option value or combination; the message names the option and value."""


class ParseError(Exception):
    """argparse's complaint, carried to :func:`report` (``prog`` is ``ptft <cmd>``)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


USER_ERRORS = (
    UserInputError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    BackendUnavailableError,
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors follow the contract: one line, no usage block, exit code 2.
    Its help renders with :class:`ptft_fast.cli.help.HelpFormatter` (subcommands inherit it)."""

    def __init__(self, *args, **kwargs) -> None:
        from ptft_fast.cli.help import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse calls this for every parse error
        raise ParseError(self.prog, message)


def short_line(exc: BaseException) -> str:
    """``exc`` on one line, cut at MAX_LINE characters."""
    text = one_line(exc)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 30] + " ... (--debug shows all)"


def report(prog: str, exc: BaseException) -> int:
    """Print the contract's line for ``exc`` and return the exit code 2."""
    print(f"{prog}: error: {short_line(exc)}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------- argparse type= validators
def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float = float("inf"), *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (``(low, high]`` with ``low_open``)."""
    rule = (
        f"{'(' if low_open else '['}{low}, {high}]"
        if high != float("inf")
        else (f"> {low}" if low_open else f">= {low}")
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {rule}, got {text!r}") from None
        ok = value == value and (value > low if low_open else value >= low) and value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value:g}")
        return value

    parse.__name__ = f"number {rule}"
    return parse


def int_list(low: int = 0) -> Callable[[str], list[int]]:
    """``"0,1,4"`` → [0, 1, 4]; every item an integer >= ``low``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated integers >= {low}, got {text!r}"
            ) from None
        if any(v < low for v in values):
            raise argparse.ArgumentTypeError(f"must be integers >= {low}, got {text!r}")
        return values

    parse.__name__ = "comma-separated integers"
    return parse


# ---------------------------------------------------------------- paths
def output_folder(option: str, path: str | Path) -> Path:
    """``path`` for an output folder: it may exist as a folder or not at all, never as a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder")
            break
    return path


def input_path(option: str, path: str | Path, *, kind: str = "file or folder") -> Path:
    """``path`` of an input that must exist (``kind``: "file", "folder" or "file or folder")."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {str(path)!r} does not exist")
    if kind == "file" and not path.is_file():
        raise UsageError(f"{option} {str(path)!r} is not a file")
    if kind == "folder" and not path.is_dir():
        raise UsageError(f"{option} {str(path)!r} is not a folder")
    return path


@contextlib.contextmanager
def removed_on_error(path: str | Path | None) -> Iterator[None]:
    """Remove ``path`` if this block created it and then failed with a user mistake, so that
    nothing half-written is left behind. A folder that existed before is never touched, and a
    crash or an interrupt keeps what was written (checkpoints are the point of it)."""
    path = None if path is None else Path(path)
    existed = path is None or path.exists()
    try:
        yield
    except USER_ERRORS:
        if not existed and path.exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


@contextlib.contextmanager
def warnings_as_lines(prog: str) -> Iterator[None]:
    """Within the block, a UserWarning prints as one line ``ptft <cmd>: warning: ...`` (not
    Python's file:line plus source line); other categories keep Python's format."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and not issubclass(category, DeprecationWarning):
            print(f"{prog}: warning: {message}", file=file or sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
