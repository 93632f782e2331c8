"""The ``ptft`` command line: one module per subcommand in ``ptft_fast.cli``.

Each subcommand module defines ``add_parser(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the handler. To add a subcommand, write the module and list it below.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("bench", "prepare", "pretrain", "export", "finetune", "generate", "icl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptft", description="ptft_fast: pre-train, fine-tune and benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"ptft_fast.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"ptft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
