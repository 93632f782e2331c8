"""The base class of every error that is the user's to fix.

A :class:`UserInputError` says that something the user gave — an option or setting value, a
file (missing, unreadable, wrong format, damaged), a model of the wrong kind for the command — is
wrong; its message is one line that names the culprit and its value. The ``ptft`` command line
turns it into ``ptft <cmd>: error: <message>`` and exit code 2, without a traceback; any other
exception is a bug of ours and stays a traceback. Each layer subclasses it for its own errors
(``TrainConfigError``, ``DataError``, ``ResumeError``, ...), so no layer imports the CLI.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user; ``str(exc)`` names the option, setting or file and the value."""


def one_line(exc: BaseException) -> str:
    """``str(exc)`` on one line (lines joined by "; ")."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1 and text[:1] in "'\"":
        text = text[1:-1]  # KeyError's str() is the repr of its message
    return text
