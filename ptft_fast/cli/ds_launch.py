"""Argument parsing of the single-node launcher with a watchdog (``ptft_fast.train.ds_launch``)::

python -m ptft_fast.train.ds_launch --nproc 2 -- python -m ptft_fast.train.deepspeed_run ...
"""

from __future__ import annotations

import argparse
import sys

from ptft_fast.train import ds_launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ptft_fast.train.ds_launch", description=ds_launch.__doc__.split("\n")[0]
    )
    parser.add_argument("--nproc", type=int, required=True, help="ranks on this machine")
    parser.add_argument("--port", type=int, help="rendezvous port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=0.0, help="stop the job after this many seconds")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command each rank runs")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command to run after --")
    return ds_launch.launch(cmd, args.nproc, args.port, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
