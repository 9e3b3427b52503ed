"""Durable file replacement: the one way this service writes a file another run will read.

Rule 1: the new content goes to a temporary file in the same directory, is flushed and fsynced,
        renamed over the target, and the directory is fsynced. A crash at any instant leaves the
        old file or the new one, whole, never a mix and never nothing.
Rule 2: on any failure the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "atomic_write", "fsync_directory", "temp_files_of"]

TEMP_SUFFIX = ".tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def temp_files_of(target: Path) -> list[Path]:
    """Temporary files a crashed write of `target` may have left behind."""
    directory = target.parent
    prefix = _temp_prefix(target)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [directory / n for n in names if n.startswith(prefix) and n.endswith(TEMP_SUFFIX)]


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, pieces: Iterable[bytes], mode: int = 0o644) -> None:
    """Replace `target` with the concatenated `pieces`, atomically and durably (blocking)."""
    directory = target.parent
    fd, temp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=directory)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(directory)
