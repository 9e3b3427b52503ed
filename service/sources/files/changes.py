"""What happened to a followed file, from plain facts: no I/O, no clock, facts in, one event out.

Rule 1: a look at a file compares what the partition knew (how far it read, the hashes of the
        prefix it consumed) with what is there now (the size and links of the file it reads,
        the hashes of the same prefix, where its name leads, how long it has been idle); the
        first rule of `classify` that holds names the event.
Rule 2: a file followed by its name (one plain path) is that name: another file or none under
        it is a change of the input. A file followed by its identity (globs, lists) is that
        file, whatever its names: a scan says whether a pattern still matches one of them
        (`classify_scan`), and a file with no name left is finished through its descriptor.
Rule 3: the prefix's hashes are a fact only when they were read: `classify` compares them when
        given, and the reader reads them when the file grew or a saved state is checked, so a
        file that is only looked at costs one `fstat`.
Rule 4: a consumed prefix may end without a '\n': the input's last line, counted when a run
        ended. Growth after it either ends that same line or makes it another one, which is a
        change of the input: line_end.py tells which, and the reader acts on it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from service.sources.files.scan import FileKey
from service.storage.checkpoint import InputIdentity

__all__ = ["Change", "Look", "classify", "classify_scan"]


class Change(enum.Enum):
    """One thing that happened to a file; the value is the `reason` the logs give."""

    GREW = "grew"  # longer than what was read, the consumed prefix as it was: read on
    UNCHANGED = "unchanged"  # no longer than what was read: caught up
    TRUNCATED = "truncated"  # shorter than what was read
    REWRITTEN = "content_changed"  # the consumed prefix holds other bytes now
    REPLACED = "replaced"  # its name (a plain path) leads to another file
    DELETED = "deleted"  # its name (a plain path) leads to no file; a glob's file has no name left
    RENAMED = "renamed"  # a pattern matches it under another name, or again
    RENAMED_OUT = "renamed_out"  # no pattern matches any of its names
    # Renamed out while not open, and found under another name in its directory (a rotation
    # while it waited for a slot or was parked): reopened by that name, read until inactive.
    RENAMED_ASIDE = "renamed_aside"
    INACTIVE = "inactive"  # renamed out, and it has not grown for `close_inactive`


_INPUT_CHANGES = frozenset({Change.TRUNCATED, Change.REWRITTEN, Change.REPLACED})


@dataclass(frozen=True)
class Look:
    """The facts of one look at a file that is open."""

    read_to: int  # known: bytes read, the position and a last line held for its `\n`
    consumed: InputIdentity | None  # known: the consumed prefix's hashes; None: nothing consumed
    size: int  # seen: the size of the file read, through its descriptor
    prefix: InputIdentity | None = None  # seen: the same prefix's hashes now; None: not read
    links: int = 1  # seen: names the file read has left; 0 once deleted
    by_name: bool = False  # known: the input is one plain path, so its name is what is read
    key: FileKey | None = None  # known: (device, inode) of the file read
    at_name: FileKey | None = None  # seen, by name only: the file the name leads to; None: none
    in_patterns: bool = True  # seen by the last scan: a pattern matches one of its names
    idle: float = 0.0  # seconds since it last grew
    close_inactive: float = math.inf  # seconds a file renamed out is read after it last grew

    @property
    def prefix_differs(self) -> bool:
        """Whether the consumed prefix, read again, holds other bytes."""
        known = self.prefix is not None and self.consumed is not None
        return known and self.prefix != self.consumed

    def is_input_change(self, change: Change) -> bool:
        """Whether `change` means the input is no longer what was consumed (`input_changed`)."""
        return change in _INPUT_CHANGES or (self.by_name and change is Change.DELETED)


def classify(look: Look) -> Change:
    """What happened to the file since what was read of it, in the order the checks matter."""
    if look.size < look.read_to:
        return Change.TRUNCATED
    if look.by_name and look.at_name is None:
        return Change.DELETED
    if look.by_name and look.at_name != look.key:
        return Change.REPLACED
    if look.prefix_differs:
        return Change.REWRITTEN
    if look.size > look.read_to:
        return Change.GREW
    if not look.by_name and look.links == 0:
        return Change.DELETED  # and read to its end: nothing more can come
    if not look.in_patterns and look.idle >= look.close_inactive:
        return Change.INACTIVE
    return Change.UNCHANGED


def classify_scan(path: str, in_patterns: bool, found_as: str | None) -> Change:
    """What a scan says of a file read as `path`: where, if anywhere, a pattern found it."""
    if found_as is None:
        return Change.RENAMED_OUT
    if found_as != path or not in_patterns:
        return Change.RENAMED
    return Change.UNCHANGED
