"""One worker per checkpoint: an OS file lock beside it, which doubles as the heartbeat.

Rule 1: the lock is `flock` on `<checkpoint>.lock`, beside the file the checkpoint's path leads
        to; the kernel drops it when the holder dies, so there is never a stale lock to clean
        up. The file holds the holder's pid, for messages.
Rule 2: the lock file is never followed: it is opened with O_NOFOLLOW and must be a regular file
        with one link before anything is written into it, so a symlink or hard link planted in
        its place can never make the worker truncate another file.
Rule 3: a running worker touches the lock file's mtime from its event loop every
        `HEARTBEAT_INTERVAL` seconds. A fresh mtime means the loop is alive, not only the process;
        `health.py` reads it without taking the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from service.errors import CheckpointWriteFailed, LockHeld

__all__ = ["HEARTBEAT_INTERVAL", "WorkerLock", "lock_path_for", "read_holder"]

HEARTBEAT_INTERVAL = 1.0


def lock_path_for(checkpoint: Path) -> Path:
    """`<checkpoint>.lock` beside the file the checkpoint's path leads to: a symbolic link to a
    checkpoint (or to its directory) shares its lock, so it is no way round it."""
    real = Path(os.path.realpath(checkpoint))
    return real.with_name(real.name + ".lock")


_HOLDER_BYTES = 32  # a pid and a newline, with room to spare
_NEVER_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO never blocks


def read_holder(lock_path: Path) -> int | None:
    """The pid written in the lock file, if any (a link or an odd file holds none)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | _NEVER_FOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.pread(fd, _HOLDER_BYTES, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None


def _refuse_odd_lock(fd: int, path: Path) -> None:
    """Close `fd` and raise unless it is a regular file with one link (nothing written yet)."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return
    os.close(fd)
    what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a file with other links"
    raise CheckpointWriteFailed(
        f"lock file {path} is {what}; refusing to use it (it was left untouched): remove it"
    )


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
            # 0o666: the umask decides, as for any file a program creates.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NEVER_FOLLOW, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise CheckpointWriteFailed(
                    f"lock file {self.path} is a symbolic link; refusing to follow it "
                    "(it was left untouched): remove it"
                ) from None
            raise CheckpointWriteFailed(
                f"cannot create lock file {self.path}: {error.strerror}"
            ) from None
        _refuse_odd_lock(fd, self.path)
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
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as error:  # a full disk: the lock is taken, the pid cannot be written
                os.close(fd)
                raise CheckpointWriteFailed(
                    f"cannot write lock file {self.path}: {error.strerror}"
                ) from None
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
