"""How ``ptft ... --help`` renders: plain text, descriptions and example epilogs kept as written,
and every option's default after its help (unless the help already says what the default is).

Rules the CLI tests hold every subcommand to (tests/test_cli_help.py): each option has a help
string; an option whose default is None says in its help what happens without it ("default: ...");
each subcommand's epilog shows examples that parse.
"""

from __future__ import annotations

import argparse


def default_text(value) -> str:
    """A default as a user would type it (lists comma-separated)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).replace("\n", "\\n")  # a template's newline shown as typed


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter with the description and epilog kept line by line, and
    ``(default: X)`` appended to an option's help when it has a default the help does not state
    (flags, None and empty defaults show nothing)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        value = action.default
        shown = value is not None and value is not False and value != [] and value is not argparse.SUPPRESS
        if not shown or "default" in text or action.nargs == 0:
            return text
        return f"{text} (default: {default_text(value).replace('%', '%%')})"


MODEL_FOLDER = "model folder: config.json, model.safetensors, tokenizer.json (e.g. ptft pretrain's OUT/final)"
