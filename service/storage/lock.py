"""One worker per checkpoint: an OS file lock beside it, which doubles as the heartbeat.

Rule 1: the lock is `flock` on `<checkpoint>.lock`; the kernel drops it when the holder dies, so
        there is never a stale lock to clean up. The file holds the holder's pid, for messages.
Rule 2: a running worker touches the lock file's mtime from its event loop every
        `HEARTBEAT_INTERVAL` seconds. A fresh mtime means the loop is alive, not only the process;
        `health.py` reads it without taking the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from service.errors import CheckpointWriteFailed, LockHeld

__all__ = ["HEARTBEAT_INTERVAL", "WorkerLock", "lock_path_for", "read_holder"]

HEARTBEAT_INTERVAL = 1.0


def lock_path_for(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".lock")


def read_holder(lock_path: Path) -> int | None:
    """The pid written in the lock file, if any."""
    try:
        text = lock_path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class WorkerLock:
    """An exclusive, non-blocking lock on a checkpoint (blocking calls, all short)."""

    def __init__(self, checkpoint: Path) -> None:
        self.path = lock_path_for(checkpoint)
        self._fd: int | None = None

    def acquire(self, *, purpose: str = "worker") -> None:
        """Take the lock or raise LockHeld naming the holder; write our pid for a worker.

        A lock file that cannot be created or locked is CheckpointWriteFailed: its directory is
        the checkpoint's.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise CheckpointWriteFailed(
                f"cannot create lock file {self.path}: {error.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CheckpointWriteFailed(f"cannot lock {self.path}: {error.strerror}") from None
            holder = read_holder(self.path)
            who = f"pid {holder}" if holder else "another process"
            raise LockHeld(
                f"checkpoint {self.path.with_suffix('')} is in use by a worker ({who}, lock "
                f"{self.path}); refusing to {'start' if purpose == 'worker' else purpose}"
            ) from None
        if purpose == "worker":
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def heartbeat(self) -> None:
        """Touch the lock file; failing to means the checkpoint's directory is failing too."""
        if self._fd is not None:
            try:
                os.utime(self._fd)
            except OSError as error:
                raise CheckpointWriteFailed(
                    f"cannot update the heartbeat of lock file {self.path}: {error.strerror}; "
                    "the checkpoint is left as it was"
                ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
