"""One process at a time: an OS lock (``flock``) on a lock file, with the holder's pid written inside.

The kernel releases the lock when its process ends, however it ends (``kill -9`` included), so a lock
left by a dead process never blocks anyone: there is no stale lock to clean up, and the lock file itself
stays (removing it would let two processes lock two different files of one name).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockBusy(Exception):
    """Another live process holds the lock; ``holder`` is its pid as it wrote it (or "unknown")."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by pid {holder}")
        self.holder = holder


def _holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"


def take_lock(path: Path, wait: bool = False) -> int:
    """Lock ``path`` (created if missing) and write our pid into it; returns the open lock file: close it to
    release the lock. Held by another live process: ``LockBusy``, or with ``wait`` block until it is free.
    A lock file that cannot be created or opened raises the ``OSError``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(_holder(fd)) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(path: Path) -> str | None:
    """The pid (as written in the lock file, or "unknown") of the live process holding ``path``'s lock;
    None when no one holds it. Creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # also releases the probe's own lock
    return None
