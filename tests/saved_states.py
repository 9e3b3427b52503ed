"""What a checkpoint holds for a file, made here for the tests that pair saved states with the
files found on disk (the worker's own `identify_input`, on the very file)."""

from __future__ import annotations

import os
from pathlib import Path

from service.core.position import Position
from service.storage.checkpoint import FileState, identify_input

__all__ = ["state_of"]


def state_of(path: Path, consumed: bytes, generation: int | None = None) -> FileState:
    """The state saved for `path` once its first bytes, `consumed`, were read (lines of
    integers), with the inode's `generation` if one is given."""
    fd = os.open(path, os.O_RDONLY)
    try:
        identity = identify_input(fd, len(consumed))
    finally:
        os.close(fd)
    lines = consumed.count(b"\n")
    position = Position(len(consumed), lines, lines, 0, sum(int(n) for n in consumed.split()))
    return FileState(str(path), path.stat().st_ino, identity, position, generation=generation)
