"""Which files are the input: one plain path, or globs and lists of them.

Rule 1: one plain path (no glob character, not a list) is the input exactly as given: it must
        exist and be a regular file, and it is followed by its path.
Rule 2: otherwise every regular file matching a pattern (`**` included) is a file of the input,
        once however many patterns or names match it, except those matching an `exclude` glob
        and the worker's own files (checkpoint, result, lock, their temporary files).
Rule 3: a scan reports files by (device, inode): the key that tells a rename from a new file
        while the worker runs. Across restarts identity is the inode and the first bytes
        (`checkpoint.py`), since a remount may change the device number.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from service.storage.atomic import TEMP_SUFFIX
from service.storage.lock import lock_path_for

__all__ = ["FileKey", "InputPatterns", "Match"]

FileKey = tuple[int, int]  # (st_dev, st_ino) of a file seen by this process
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Match:
    """A regular file a scan found: the name it was found under, and its size then."""

    path: str
    inode: int
    size: int


@dataclass(frozen=True)
class InputPatterns:
    """The `input` and `exclude` settings, and the worker's own files never to read."""

    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    own_files: tuple[Path, ...] = ()

    @property
    def plain_path(self) -> Path | None:
        """The one path when the input is a single plain path, else None."""
        if len(self.patterns) == 1 and not _GLOB_CHARACTERS & set(self.patterns[0]):
            return Path(self.patterns[0])
        return None

    def describe(self) -> str:
        """The input as a person wrote it: the path, or the patterns joined by commas."""
        return ", ".join(self.patterns)

    def _is_own(self, path: str) -> bool:
        absolute = os.path.abspath(path)
        name = os.path.basename(absolute)
        for own in self.own_files:
            own_absolute = os.path.abspath(own)
            if absolute == own_absolute:
                return True
            same_directory = os.path.dirname(absolute) == os.path.dirname(own_absolute)
            if same_directory and name.startswith(f".{own.name}.") and name.endswith(TEMP_SUFFIX):
                return True
        return False

    def _is_excluded(self, path: str) -> bool:
        name = os.path.basename(path)
        normalized = os.path.normpath(path)
        return any(
            fnmatchcase(normalized, pattern) or fnmatchcase(name, pattern)
            for pattern in self.exclude
        ) or self._is_own(path)

    def scan(self) -> dict[FileKey, Match]:
        """Every regular file of the input now, by (device, inode); blocking, cheap."""
        found: dict[FileKey, Match] = {}
        for pattern in self.patterns:
            names = (
                sorted(glob.glob(pattern, recursive=True))
                if _GLOB_CHARACTERS & set(pattern)
                else [pattern]
            )
            for name in names:
                if self._is_excluded(name):
                    continue
                try:
                    info = os.stat(name)
                except OSError:
                    continue  # gone between the listing and the look, or unreadable
                if stat.S_ISREG(info.st_mode):
                    found.setdefault(
                        (info.st_dev, info.st_ino), Match(name, info.st_ino, info.st_size)
                    )
        return found

    @classmethod
    def of(
        cls, patterns: tuple[str, ...], exclude: tuple[str, ...], *, checkpoint: Path, result: Path
    ) -> InputPatterns:
        return cls(patterns, exclude, (checkpoint, result, lock_path_for(checkpoint)))
