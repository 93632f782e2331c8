"""Atomic file writes: write to a temp file in the same folder, fsync, then ``os.replace``.

A reader never sees a half-written corpus, shard, index, checkpoint or saved model: either the old
file or the new one. Used by every layer that writes files (data, train, peft, hf, finetune).
Temp files and folders get the permissions of a plain ``open``/``mkdir`` under the process umask
(``mkstemp``/``mkdtemp`` make them 0600/0700, which a run folder on a shared filesystem must not keep).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only a fallback)
    os.umask(mask)
    return mask


def fix_mode(path: str | os.PathLike | int, directory: bool = False) -> None:
    """Give ``path`` (or an open file descriptor) the mode a plain create would: 0666 / 0777 (folders)
    less the umask."""
    mode = (0o777 if directory else 0o666) & ~current_umask()
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


@contextlib.contextmanager
def _temp_beside(path: str | os.PathLike) -> Iterator[str]:
    """The name of a new temp file beside ``path``. On clean exit it gets the umask's mode, is
    fsynced and renamed over ``path``; on an exception it is removed and ``path`` left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        fix_mode(tmp)  # mkstemp (and safetensors) create 0600 files
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``.

    On an exception the temp file is removed and ``path`` is left untouched.
    """
    with _temp_beside(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
        yield fh


def atomic_write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=sort_keys)
        fh.write("\n")


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temp file beside ``path`` (for writers that take a path, such as
    safetensors' ``save_file``), give it the umask's mode, fsync it and rename it over ``path``.

    On an exception the temp file is removed and ``path`` is left untouched.
    """
    with _temp_beside(path) as tmp:
        write(tmp)


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file(tensors, path, metadata)``, atomically and with the umask's mode."""
    from safetensors.torch import save_file

    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
