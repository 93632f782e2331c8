"""A single-node launcher with a watchdog: start N ranks of a command, and when one dies, stop the
others and exit non-zero with a message naming the lost rank.

    python -m ptft_fast.train.ds_launch --nproc 2 -- python -m ptft_fast.train.deepspeed_run ...

Why: with gloo, the surviving ranks of a job whose peer was killed block in the next collective
until the process-group timeout (minutes). The watchdog polls the ranks and ends the job at once.
Each rank gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (a free port unless
``--port``), as ``torchrun`` / the ``deepspeed`` launcher set them. Its options are parsed in
``ptft_fast.cli.ds_launch``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

EXIT_LOST_RANK = 3
EXIT_TIMEOUT = 124


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM the running ranks, SIGKILL those still alive after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(cmd: list[str], nproc: int, port: int | None = None, timeout_s: float = 0.0) -> int:
    """Run ``cmd`` as ranks 0..nproc-1; 0 when all succeed, EXIT_LOST_RANK when one fails."""
    port = port or free_port()
    procs = []
    for rank in range(nproc):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(subprocess.Popen(cmd, env=env))
        print(f"ptft launch: rank {rank} pid {procs[-1].pid}", flush=True)
    start = time.monotonic()
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                print(
                    f"ptft launch: rank {rank} (pid {procs[rank].pid}) {describe(code)}; "
                    f"stopping the other {nproc - 1} rank(s). Resume with --resume latest.",
                    file=sys.stderr,
                    flush=True,
                )
                stop(procs)
                return EXIT_LOST_RANK
            if all(c == 0 for c in codes):
                return 0
            if timeout_s and time.monotonic() - start > timeout_s:
                print(f"ptft launch: job exceeded {timeout_s:.0f} s; stopping all ranks", file=sys.stderr)
                stop(procs)
                return EXIT_TIMEOUT
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop(procs)
        raise


if __name__ == "__main__":  # the command line is parsed in the CLI layer
    from ptft_fast.cli.ds_launch import main

    sys.exit(main())
