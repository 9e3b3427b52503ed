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
Rule 4: the lock is the file at its path, not only the one the worker opened: a lock file
        removed under a running worker (a careless `rm`) would let a second worker lock a new
        one. Each heartbeat looks: a removed lock file is made and locked again; one that
        another process made first is `LockLost`, which stops the run without a final save, so
        the other worker's checkpoint is not written over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from service.errors import CheckpointWriteFailed, LockHeld, LockLost

__all__ = ["HEARTBEAT_INTERVAL", "PID_MAX", "WorkerLock", "lock_path_for", "read_holder"]

HEARTBEAT_INTERVAL = 1.0
_ATTEMPTS = 5  # opens of a lock file that keeps being replaced before giving up


def lock_path_for(checkpoint: Path) -> Path:
    """`<checkpoint>.lock` beside the file the checkpoint's path leads to: a symbolic link to a
    checkpoint (or to its directory) shares its lock, so it is no way round it."""
    real = Path(os.path.realpath(checkpoint))
    return real.with_name(real.name + ".lock")


_HOLDER_BYTES = 32  # a pid and a newline, with room to spare
PID_MAX = 1 << 22  # Linux's largest pid (PID_MAX_LIMIT on 64-bit)
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
    if not (text.isascii() and text.isdigit()):
        return None
    pid = int(text)
    return pid if 0 < pid <= PID_MAX else None  # 0 would name every process of our group


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
        for _attempt in range(_ATTEMPTS):
            fd = self._open(os.O_CREAT)
            if not self._lock(fd):
                holder = read_holder(self.path)
                who = f"pid {holder}" if holder else "another process"
                raise LockHeld(
                    f"checkpoint {self.path.with_suffix('')} is in use by a worker ({who}, lock "
                    f"{self.path}); refusing to {'start' if purpose == 'worker' else purpose}"
                )
            if self._is_at_its_path(fd):
                break
            os.close(fd)  # removed or replaced between its open and its lock: take the new one
        else:
            raise CheckpointWriteFailed(f"lock file {self.path} keeps being replaced")
        if purpose == "worker":
            self._write_pid(fd)
        self._fd = fd

    def heartbeat(self) -> bool:
        """Touch the lock file; failing to means the checkpoint's directory is failing too.

        True when the lock file had been removed and was made again (Rule 4).
        """
        if self._fd is None:
            return False
        remade = False
        if not self._is_at_its_path(self._fd):
            self._take_back()
            remade = True
        try:
            os.utime(self._fd)
        except OSError as error:
            raise CheckpointWriteFailed(
                f"cannot update the heartbeat of lock file {self.path}: {error.strerror}; "
                "the checkpoint is left as it was"
            ) from None
        return remade

    def _take_back(self) -> None:
        lost = LockLost(
            f"lock file {self.path} was replaced while this worker held it: another worker may "
            "hold the checkpoint now; stopping without a final checkpoint (the one on disk is "
            "whole)"
        )
        try:
            fd = self._open(os.O_CREAT | os.O_EXCL)
        except CheckpointWriteFailed:
            raise lost from None
        if not self._lock(fd):
            raise lost
        self._write_pid(fd)
        assert self._fd is not None
        os.close(self._fd)
        self._fd = fd

    def _open(self, create: int) -> int:
        try:
            # 0o666: the umask decides, as for any file a program creates.
            fd = os.open(self.path, os.O_RDWR | create | _NEVER_FOLLOW, 0o666)
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
        return fd

    def _lock(self, fd: int) -> bool:
        """flock `fd`; False (and `fd` closed) when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CheckpointWriteFailed(f"cannot lock {self.path}: {error.strerror}") from None
            return False
        return True

    def _is_at_its_path(self, fd: int) -> bool:
        try:
            there = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise CheckpointWriteFailed(f"cannot look at {self.path}: {error.strerror}") from None
        return os.path.samestat(there, os.fstat(fd))

    def _write_pid(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:  # a full disk: the lock is taken, the pid cannot be written
            os.close(fd)
            raise CheckpointWriteFailed(
                f"cannot write lock file {self.path}: {error.strerror}"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
