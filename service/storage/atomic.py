"""Durable file replacement: the one way this service writes a file another run will read.

Rule 1: the new content goes to a temporary file in the same directory, is flushed and fsynced,
        renamed over the target, and the directory is fsynced. A crash at any instant leaves the
        old file or the new one, whole, never a mix and never nothing.
Rule 2: on any failure the temporary file is removed and the target is untouched.
Rule 3: a file read back whole (a config, a checkpoint) must be a regular file of bounded size:
        a FIFO, a device or a huge file is refused at once, never waited on or read into memory.
Rule 4: the new file gets the permissions any program's new file gets: 0o666 less the umask
        (`mkstemp` makes it 0o600 whatever the umask, so its mode is set before the rename).
Rule 5: a symbolic link is written through: the file it leads to is replaced, the link stays.
        What is there must be a regular file: a device (/dev/null), a FIFO or a directory is
        refused, never replaced by a regular file.
Rule 6: a temporary file is locked (flock) by its writer until it is renamed, and only an
        unlocked one is removed as left behind: another process's write in progress (two
        `generate`s of one file) is never taken for a crashed one. A temporary file is named
        `.NAME.XXXXXXXX.tmp` exactly, so `cp`'s are never confused with `cp.b`'s.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import signal
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from service.signals import STOP_SIGNALS

__all__ = [
    "LONGEST_WRITTEN_NAME",
    "MAX_CONFIG_BYTES",
    "NAME_MAX",
    "PATH_MAX",
    "atomic_write",
    "fsync_directory",
    "is_temp_file_of",
    "open_regular_file",
    "read_regular_file",
    "remove_left_temp_files",
    "replaceable",
    "temp_files_of",
    "written_path",
]

TEMP_SUFFIX = ".tmp"
NAME_MAX = 255  # bytes in a directory entry's name (Linux's file systems)
PATH_MAX = 4096  # bytes in a path a system call takes, its closing NUL included (Linux)
# The longest name of a file written here: its temporary file, `.NAME.XXXXXXXX.tmp`, must fit a
# directory entry, or a save would fail only once the input had been read.
LONGEST_WRITTEN_NAME = NAME_MAX - len("..XXXXXXXX") - len(TEMP_SUFFIX)
MAX_CONFIG_BYTES = 1 << 20  # a config file, or a secret's file, is small


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def written_path(target: Path) -> Path:
    """The file a write of `target` replaces: through its symbolic links (Rule 5)."""
    return Path(os.path.realpath(target))


# mkstemp's random part: 8 characters of its alphabet (Rule 6).
_TEMP_RANDOM = "[a-z0-9_]{8}"


def is_temp_file_of(name: str, target_name: str) -> bool:
    """Whether `name` is the shape of a temporary file of a write of `target_name` (Rule 6)."""
    prefix = f".{target_name}."
    # Most names are told apart by their length and ends: a scan asks this of every file found.
    if len(name) != len(prefix) + 8 + len(TEMP_SUFFIX) or not name.startswith(prefix):
        return False
    return re.fullmatch(_TEMP_RANDOM + re.escape(TEMP_SUFFIX), name[len(prefix) :]) is not None


def temp_files_of(target: Path) -> list[Path]:
    """The temporary files of writes of `target` in its directory, left behind or in progress."""
    target = written_path(target)
    directory = target.parent
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [directory / name for name in names if is_temp_file_of(name, target.name)]


def remove_left_temp_files(target: Path) -> list[Path]:
    """Remove the temporary files crashed writes of `target` left behind, never one another
    process is writing (Rule 6); the ones removed."""
    return [temp for temp in temp_files_of(target) if _remove_unless_written(temp)]


def _remove_unless_written(temp: Path) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Locked by us: no writer holds it; a writer that has just renamed it took the name away.
        os.unlink(temp)
        return True
    except OSError:  # its writer holds it, or it is gone already
        return False
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _umask() -> int:
    """The process's umask, read without changing it (Linux shows it in /proc since 4.7)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)  # elsewhere the only way to read it is to set it and set it back
    os.umask(current)
    return current


def _new_file_mode() -> int:
    """The mode a new file gets: 0o666 less the umask."""
    return 0o666 & ~_umask()


def replaceable(target: Path) -> Path:
    """The file a write of `target` replaces (through its links); an OSError when what is there
    is not a regular file (Rule 5)."""
    target = written_path(target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target  # the write makes it
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file", str(target))
    return target


def atomic_write(target: Path, pieces: Iterable[bytes]) -> None:
    """Replace `target` with the concatenated `pieces`, atomically and durably (blocking)."""
    target = replaceable(target)
    directory = target.parent
    # A stop signal whose handler raises (Ctrl+C) is held while the temporary file is created:
    # raised between its creation and the `try`, it would leave the file behind (Rule 2).
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        fd, temp_name = tempfile.mkstemp(
            prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=directory
        )
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    temp = Path(temp_name)
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held signal is raised in here
        with os.fdopen(fd, "wb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # held until renamed (Rule 6)
            for piece in pieces:
                handle.write(piece)
            handle.flush()
            os.fchmod(handle.fileno(), _new_file_mode())
            os.fsync(handle.fileno())
            os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(directory)


def open_regular_file(path: str | Path) -> tuple[int, os.stat_result]:
    """A descriptor of `path` open for reading, and its stat; an OSError when it is not a
    regular file. O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; an OSError saying why not."""
    fd, info = open_regular_file(path)
    try:
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        pieces: list[bytes] = []
        size = 0
        while piece := os.read(fd, min(limit + 1 - size, 1 << 20) or 1):
            pieces.append(piece)
            size += len(piece)
            if size > limit:  # it may have grown since fstat
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(pieces)
    finally:
        os.close(fd)
