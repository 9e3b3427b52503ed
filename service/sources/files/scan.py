"""Which files are the input: one plain path, or globs and lists of them.

Rule 1: one plain path (no glob character, not a list) is the input exactly as given: it must
        exist and be a regular file, and it is followed by its path.
Rule 2: otherwise every regular file matching a pattern (`**` included) is a file of the input,
        once however many patterns or names match it, except those matching an `exclude` glob
        and the worker's own files (checkpoint, result, lock, their temporary files).
Rule 3: the worker's own files are known by the (device, inode) of their directory and their
        names (a save makes a new inode, the directory stays), and by the (device, inode) of
        each as it is now, whatever path reaches them: a directory symlink, `..`, a link.
Rule 4: `**` walks each directory once, by its (device, inode): a directory symlink that leads
        back to a directory already walked (a loop) is skipped and reported, never followed.
Rule 5: a scan reports files by (device, inode): the key that tells a rename from a new file
        while the worker runs. Across restarts identity is the inode and the first bytes
        (`checkpoint.py`), since a remount may change the device number.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from service.core.names import shown
from service.settings import GLOB_CHARACTERS, Listed
from service.storage.atomic import is_temp_file_of, written_path
from service.storage.lock import lock_path_for

__all__ = ["FileKey", "FilesBeside", "InputPatterns", "Match", "identity_of"]

FileKey = tuple[int, int]  # (st_dev, st_ino) of a file seen by this process


@dataclass(frozen=True)
class Match:
    """A regular file a scan found: the name it was found under, its size and its inode's
    change time (st_ctime_ns: any write, rename or replacement on that inode moves it) then."""

    path: str
    inode: int
    size: int
    changed_ns: int = 0


@dataclass(frozen=True)
class _OwnFiles:
    """The worker's own files as one scan sees them: where they live and what they are now."""

    names_in: dict[FileKey, frozenset[str]]  # directory (device, inode) -> own names there
    names: frozenset[str]  # every own name, in whichever directory
    files: frozenset[FileKey]  # each own file that exists now, by (device, inode)
    directories: dict[str, FileKey | None]  # a directory as a scan names it -> its identity

    @classmethod
    def look(cls, own: tuple[Path, ...]) -> _OwnFiles:
        names_in: dict[FileKey, frozenset[str]] = {}
        files: set[FileKey] = set()
        for path in own:
            directory = identity_of(str(path.parent))
            if directory is not None:
                names_in[directory] = names_in.get(directory, frozenset()) | {path.name}
            file = identity_of(str(path))
            if file is not None:
                files.add(file)
        files |= log_files()
        return cls(names_in, frozenset(p.name for p in own), frozenset(files), {})

    def holds(self, path: str, key: FileKey, *, link: bool) -> bool:
        """Whether `path`, which is the file `key` (through a symbolic link when `link`), is one
        of the worker's own files."""
        if key in self.files:
            return True
        name = os.path.basename(path)
        if not self._may_be_own(name):
            # Most names: no look at the directory at all. A symbolic link is known by what it
            # leads to: `files` may not know an own file's identity yet (each save makes a new
            # one), its name and directory tell.
            if not link:
                return False
            path = os.path.realpath(path)
            name = os.path.basename(path)
            if not self._may_be_own(name):
                return False
        folder = os.path.dirname(path) or "."
        if folder not in self.directories:  # one look per directory a scan
            self.directories[folder] = identity_of(folder)
        names = self.names_in.get(self.directories[folder] or (-1, -1), frozenset())
        return any(name == own or is_temp_file_of(name, own) for own in names)

    def _may_be_own(self, name: str) -> bool:
        return any(name == own or is_temp_file_of(name, own) for own in self.names)


def log_files() -> set[FileKey]:
    """The files stdout and stderr write to, when they are files (`run > data/out.log`): read
    as input, each log line would be a bad record, whose reading logs another line."""
    files = set()
    for fd in (1, 2):
        try:
            info = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            files.add((info.st_dev, info.st_ino))
    return files


def identity_of(path: str) -> FileKey | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _glob_matches(parts: list[str], names: list[str]) -> bool:
    """Whether the path components `names` match the glob components `parts` as glob matches
    them: each one by `fnmatch`, and `**` any number of them, none included. One pass over the
    parts, keeping how many names each match so far can have used: many `**` cost no more."""
    reachable = {0}
    for part in parts:
        if part == "**":
            reachable = set(range(min(reachable), len(names) + 1))
        else:
            reachable = {n + 1 for n in reachable if n < len(names) and fnmatchcase(names[n], part)}
        if not reachable:
            return False
    return len(names) in reachable


@dataclass
class ScanNotes:
    """What a scan met besides files: directories a `**` reached a second time through a
    symbolic link (walked once), and directories it could not list, with why."""

    loops: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    def note_unreadable(self, directory: str, error: OSError) -> None:
        if not isinstance(error, (FileNotFoundError, NotADirectoryError)):  # gone: nothing lost
            self.unreadable.setdefault(directory or ".", error.strerror or str(error))


def _expand(pattern: str, notes: ScanNotes) -> list[str]:
    """The names a glob matches, like `glob.glob(pattern, recursive=True)`, but `**` walks each
    directory once (a directory reached again through a symlink is noted in `notes.loops`),
    and a directory it cannot list is noted, where glob would pass it over in silence."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    head = os.sep.join(parts[:at]) or (os.sep if pattern.startswith(os.sep) else "")
    while parts[at + 1 : at + 2] == ["**"]:  # `**/**` matches what one `**` does, walked once
        at += 1
    rest = os.sep.join(parts[at + 1 :]) or "*"  # a trailing `**`: every file below, too
    bases = glob.glob(head) if GLOB_CHARACTERS & set(head) else [head]
    names: list[str] = []
    for base in bases:
        for directory in _directories_under(base, notes):
            names += _expand(os.path.join(glob.escape(directory), rest), notes)
    return names


def _look_into_first_listed(pattern: str, notes: ScanNotes) -> None:
    """The directory a glob without `**` lists first (`data` of `data/*.txt`) opened, to note
    it when it cannot be listed: the usual way a whole directory of inputs goes missing unseen.
    (`**` notes every directory it walks.)"""
    parts = pattern.split(os.sep)
    at = next((i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part)), None)
    if at is None or "**" in parts:
        return
    directory = os.sep.join(parts[:at]) or (os.sep if pattern.startswith(os.sep) else ".")
    try:
        os.close(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as error:
        notes.note_unreadable(directory, error)


def _directories_under(base: str, notes: ScanNotes) -> list[str]:
    """`base` and every directory below it (hidden ones aside, as glob does), each once."""
    found: list[str] = []
    seen: set[FileKey] = set()
    stack = [base]
    while stack:
        directory = stack.pop()
        key = identity_of(directory or ".")
        if key is None:
            continue
        if key in seen:
            notes.loops.append(directory)
            continue
        seen.add(key)
        found.append(directory)
        try:
            with os.scandir(directory or ".") as entries:
                below = [e.name for e in entries if not e.name.startswith(".") and _is_dir(e)]
        except OSError as error:
            notes.note_unreadable(directory, error)
            continue  # nothing below it to read
        stack += [os.path.join(directory, name) for name in sorted(below, reverse=True)]
    return found


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows a symlink: a linked directory is walked, once
    except OSError:
        return False


@dataclass(frozen=True)
class InputPatterns:
    """The `input` and `exclude` settings, and the worker's own files never to read."""

    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    own_files: tuple[Path, ...] = ()

    @property
    def plain_path(self) -> Path | None:
        """The one path when the input is a single plain path (not a list of one), else None."""
        listed = isinstance(self.patterns, Listed)
        if len(self.patterns) == 1 and not listed and not GLOB_CHARACTERS & set(self.patterns[0]):
            return Path(self.patterns[0])
        return None

    def describe(self) -> str:
        """The input as a person wrote it: the path, or the patterns joined by commas, each
        escaped as every name shown is (`shown`)."""
        return ", ".join(shown(pattern) for pattern in self.patterns)

    def _is_excluded(self, path: str) -> bool:
        """Whether an `exclude` glob matches: one without a `/` the file's name, one with a `/`
        its path, as the input's globs match (`*` within one directory, `**` across any),
        relative to the working directory however either is written (`./`, absolute)."""
        name = os.path.basename(path)
        names = os.path.abspath(path).split("/")
        return any(
            _glob_matches(os.path.abspath(pattern).split("/"), names)
            if "/" in pattern
            else fnmatchcase(name, pattern)
            for pattern in self.exclude
        )

    def scan(self, notes: ScanNotes | None = None) -> dict[FileKey, Match]:
        """Every regular file of the input now, by (device, inode); blocking, cheap. What else
        the globs met goes into `notes`."""
        own = _OwnFiles.look(self.own_files)
        found: dict[FileKey, Match] = {}
        notes = notes or ScanNotes()
        for pattern in self.patterns:
            names = [pattern]
            if GLOB_CHARACTERS & set(pattern):
                _look_into_first_listed(pattern, notes)
                names = sorted(_expand(pattern, notes))
            for name in names:
                if self._is_excluded(name):
                    continue
                try:
                    info = os.lstat(name)
                    link = stat.S_ISLNK(info.st_mode)
                    if link:
                        info = os.stat(name)
                except OSError:
                    continue  # gone between the listing and the look, or unreadable
                key = (info.st_dev, info.st_ino)
                if stat.S_ISREG(info.st_mode) and not own.holds(name, key, link=link):
                    found.setdefault(key, Match(name, info.st_ino, info.st_size, info.st_ctime_ns))
        return found

    @classmethod
    def of(
        cls, patterns: tuple[str, ...], exclude: tuple[str, ...], *, checkpoint: Path, result: Path
    ) -> InputPatterns:
        # A checkpoint or result that is a link is written through it: the file it leads to,
        # and that file's temporary ones, are the worker's too.
        own = (checkpoint, result, written_path(checkpoint), written_path(result))
        return cls(patterns, exclude, (*own, lock_path_for(checkpoint)))


class FilesBeside:
    """Where a file renamed out of the patterns while it was not open went, when it stayed
    beside its old name (a rotation's `a.txt` to `a.txt.1`). Each directory is listed once a
    scan, by inode number alone (no stat a file: the listing gives it); a name is then checked
    by its (device, inode)."""

    def __init__(self) -> None:
        self._listed: dict[str, dict[int, list[str]]] = {}

    def name_of(self, old_path: str, key: FileKey) -> str | None:
        directory = os.path.dirname(old_path) or "."
        if directory not in self._listed:
            self._listed[directory] = _names_by_inode(directory)
        for name in self._listed[directory].get(key[1], ()):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):  # gone since the listing
                info = os.stat(path, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == key:
                    return path
        return None


def _names_by_inode(directory: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    # A directory gone or unreadable has nothing beside.
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            found.setdefault(entry.inode(), []).append(entry.name)
    return found
