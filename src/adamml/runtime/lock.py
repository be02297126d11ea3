"""One process at a time in a run folder: two ``adamml train`` runs on one ``--output`` would
interleave their logs and mix their checkpoints.

The lock is an advisory ``flock`` on ``<folder>/.lock``, so the system releases it when its
holder dies (a kill -9 leaves no stale lock); the file names the holder (pid, host, start
time, command) so the refusal can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adamml.errors import AdamMLError

LOCK_FILE = ".lock"


class FolderLocked(AdamMLError, RuntimeError):
    """Another live process holds the folder."""


def _unwritable(folder: Path, exc: OSError) -> AdamMLError:
    return AdamMLError(f"{folder}: cannot write the run folder ({exc.strerror or exc}); choose another --output")


@contextmanager
def hold_folder(folder: str | os.PathLike[str], *, what: str = "run folder") -> Iterator[Path]:
    """Hold ``folder`` for the block; refuse with the holder's name when another process has it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(folder, exc) from None
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise FolderLocked(
                f"{folder}: this {what} is in use by {holder}; wait for it to finish, or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({command})\n")
        handle.flush()
        try:
            yield folder
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
