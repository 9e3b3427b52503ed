"""The end of a last line counted without its '\n', when bytes have come after it since.

A run that is not following counts the input's last line at the end of the file even without a
'\n', and its position ends there, inside what may still become a longer line. What a writer
appends next either ends that same line or makes it another line:
- the same line: spaces or tabs, then at most one '\r', then the '\n' (the input rules allow all
  of them after a number), within `max_line_bytes`. Those bytes are consumed with the line, and
  no line is counted for them: the next line starts after the '\n';
- not yet known: only such bytes so far, no '\n' yet. Following, nothing is read until more
  comes; at the end of an input that is not followed, they end the same line;
- another line: anything else (a digit that makes `2` into `25`, a second '\r', a line now over
  the limit). The line counted is not in the file any more: the input changed.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Iterator

__all__ = ["Ending", "counted_line_ends", "ending_of", "read_ending"]

_BLOCK = 64 * 1024
_BLANKS = re.compile(rb"[ \t]*")


class Ending(enum.Enum):
    CAME = "came"  # the same line, ended: consume its ending with it
    PENDING = "pending"  # only what may end the same line so far, no '\n' yet
    WENT_ON = "went_on"  # another line: the input changed


def ending_of(last: int, blocks: Iterable[bytes], room: int | None) -> tuple[Ending, int]:
    """What `blocks` (the bytes after the counted line, in order) make of it, and how many of
    them belong to it. `last` is the line's last byte; `room`, how many more bytes it may hold
    under `max_line_bytes` (None: it was over the limit already, a bad record whatever comes)."""
    taken = 0
    carriage_return = last == ord("\r")  # a '\r' may only come just before the '\n'
    for block in blocks:
        newline = block.find(b"\n")
        body = block if newline < 0 else block[:newline]
        blanks = _BLANKS.match(body).end()  # type: ignore[union-attr]
        rest = body[blanks:]
        if (carriage_return and body) or rest not in (b"", b"\r"):
            return Ending.WENT_ON, 0
        carriage_return = rest == b"\r"
        taken += len(body)
        if room is not None and taken > room:
            return Ending.WENT_ON, 0
        if newline >= 0:
            return Ending.CAME, taken + 1
    return Ending.PENDING, taken


def counted_line_ends(fd: int, offset: int) -> bool:
    """Whether `offset` ends a line counted without its '\n' (blocking): not a line's start."""
    return offset > 0 and os.pread(fd, 1, offset - 1) != b"\n"


def read_ending(fd: int, offset: int, max_line_bytes: int) -> tuple[Ending, int]:
    """`ending_of` the bytes in the file after `offset`, where a counted line ends (blocking).
    Reads at most the line's limit, a block at a time."""
    last = os.pread(fd, 1, offset - 1)
    if not last:  # cut below the line since it was looked at: not that line any more
        return Ending.WENT_ON, 0
    length = _length_of_line_before(fd, offset, max_line_bytes)
    room = None if length is None else max_line_bytes - length
    return ending_of(last[0], _blocks_after(fd, offset), room)


def _blocks_after(fd: int, offset: int) -> Iterator[bytes]:
    while block := os.pread(fd, _BLOCK, offset):
        yield block
        offset += len(block)


def _length_of_line_before(fd: int, offset: int, max_line_bytes: int) -> int | None:
    """The length of the line that ends at `offset`; None when it is longer than the limit."""
    end = offset
    while end > 0 and offset - end <= max_line_bytes:
        start = max(end - _BLOCK, 0)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            length = offset - (start + newline + 1)
            return length if length <= max_line_bytes else None
        end = start
    return offset if end == 0 and offset <= max_line_bytes else None
