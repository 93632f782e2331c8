"""The ``ptft`` command line: one module per subcommand in ``ptft_fast.cli``.

Each subcommand module defines ``add_parser(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the handler. To add a subcommand, write the module and list it below.
Errors follow one contract (``ptft_fast.cli.errors``): a user mistake is exit code 2 and one line
``ptft <cmd>: error: ...``; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys

from ptft_fast.cli.errors import USER_ERRORS, ParseError, Parser, report, warnings_as_lines

SUBCOMMANDS = (
    "models",
    "prepare",
    "pretrain",
    "finetune",
    "predict",
    "merge",
    "glue",
    "generate",
    "icl",
    "export",
    "bench",
)
DEBUG_HELP = "show the traceback of an error (default: one line)"
EXAMPLES = """getting started:
  ptft models                          # the model presets: shape, parameters, intended use
  ptft pretrain --list-settings        # every --set key: type, default, range, meaning
  ptft pretrain --model bert-tiny --set max_time_s=600   # a ten-minute run
  ptft finetune --model runs/pretrain/final --task cls --train train.tsv --eval test.tsv
  ptft COMMAND --help                  # options and examples of one command
"""


def build_parser() -> Parser:
    parser = Parser(
        prog="ptft",
        description="ptft_fast: pre-train, fine-tune, generate, evaluate in context and benchmark",
        epilog=EXAMPLES,
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"ptft_fast.cli.{name}").add_parser(sub)
    for command in sub.choices.values():  # `ptft CMD ... --debug` works too
        command.add_argument("--debug", action="store_true", default=False, help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = build_parser().parse_known_args(argv)
        prog = f"ptft {args.command}"
        if extra:  # reported under the subcommand, not the top-level parser
            raise ParseError(prog, f"unrecognized arguments: {' '.join(extra)}")
    except ParseError as exc:
        return report(exc.prog, exc)
    try:
        with warnings_as_lines(prog):
            return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug or "--debug" in argv:
            raise
        return report(prog, exc)


if __name__ == "__main__":
    sys.exit(main())
