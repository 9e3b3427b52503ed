"""The end of a last line counted without its '\\n': what bytes that came after it make of it.

A run that is not following counts the input's last line at the end of the file. What a writer
appends next either ends that very line (no line counted for those bytes) or makes it another
line, which must be an input change, never a silent wrong sum.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from service.core.parsing import line_values
from service.sources.files.line_end import Ending, counted_line_ends, ending_of, read_ending

LIMIT = 8


def _blocks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or []


@pytest.mark.parametrize(
    ("line", "after", "expected"),
    [
        (b"2", b"\n5\n", (Ending.CAME, 1)),
        (b"2", b"\r\n5\n", (Ending.CAME, 2)),
        (b"2", b" \t \r\n", (Ending.CAME, 5)),
        (b"2\r", b"\n", (Ending.CAME, 1)),
        (b"x", b" \n", (Ending.CAME, 2)),
        (b"2", b" \t", (Ending.PENDING, 2)),
        (b"2", b"\r", (Ending.PENDING, 1)),
        (b"2", b"5\n", (Ending.WENT_ON, 0)),
        (b"2", b" 5\n", (Ending.WENT_ON, 0)),
        (b"2", b"\r\r\n", (Ending.WENT_ON, 0)),
        (b"2", b"\r \n", (Ending.WENT_ON, 0)),
        (b"2\r", b" \n", (Ending.WENT_ON, 0)),
        (b"1234567", b"  \n", (Ending.WENT_ON, 0)),
        (b"1234567", b" \n", (Ending.CAME, 2)),
    ],
    ids=[
        "its newline came, with more lines",
        "a CRLF ending",
        "spaces, tabs and a CR before the newline",
        "a CR counted already, then its newline",
        "a bad line ends the same way",
        "blanks so far, no newline yet",
        "a CR so far",
        "a digit makes it another number",
        "a digit after a blank makes it a bad record",
        "two CRs make it a bad record",
        "a CR not just before the newline",
        "a blank after a counted CR",
        "past the line limit: a record would be a bad record",
        "up to the line limit: the same record",
    ],
)
def test_what_comes_after_a_counted_line_ends_it_or_makes_it_another(
    tmp_path: Path, line: bytes, after: bytes, expected: tuple[Ending, int]
) -> None:
    """The same answer in memory and from a file, a byte at a time or all at once."""
    room = LIMIT - len(line)
    for size in (1, 3, 64):
        assert ending_of(line[-1], _blocks(after, size), room) == expected
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n" + line + after)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert counted_line_ends(fd, 2 + len(line))
        assert not counted_line_ends(fd, 2)
        assert read_ending(fd, 2 + len(line), LIMIT) == expected
    finally:
        os.close(fd)


def test_a_line_over_the_limit_already_is_bad_whatever_blanks_end_it(tmp_path: Path) -> None:
    """A counted line longer than the limit was a bad record; blanks and its newline keep it
    one, found back across blocks of the file."""
    path = tmp_path / "numbers.txt"
    line = b"9" * 200_000
    path.write_bytes(b"1\n" + line + b"  \n7\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_ending(fd, 2 + len(line), 4096) == (Ending.CAME, 3)
        assert read_ending(fd, 2 + len(line), 300_000) == (Ending.CAME, 3)
        assert read_ending(fd, 2 + len(line), 200_001) == (Ending.WENT_ON, 0)
    finally:
        os.close(fd)


def _bytes_of(alphabet: bytes, min_size: int, max_size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), min_size=min_size, max_size=max_size).map(bytes)


@hypothesis.given(
    line=_bytes_of(b"0123456789+- \t\rx", 1, 10),
    after=_bytes_of(b"0123456789+- \t\r\nx", 1, 12),
    block=st.integers(1, 5),
)
def test_a_line_said_to_be_the_same_is_the_same_by_the_input_rules(
    line: bytes, after: bytes, block: int
) -> None:
    """Whatever comes after a counted line: when it is said to end that line (at its newline,
    or at the end of an input not followed), the line it makes has the value, blankness or
    badness that was counted. And a plain ending (blanks, a CR, the newline) is never refused."""
    ending, taken = ending_of(line[-1], _blocks(after, block), LIMIT - len(line))

    def value(text: bytes) -> object:
        [(_, counted)] = line_values(text + b"\n", LIMIT)
        return "bad" if isinstance(counted, str) else counted

    if ending is Ending.CAME:
        assert after[taken - 1 : taken] == b"\n"
        assert value(line + after[: taken - 1]) == value(line)
    elif ending is Ending.PENDING:
        assert taken == len(after)
        assert b"\n" not in after
        assert value(line + after) == value(line)
    body = after.split(b"\n")[0]
    plain = re.fullmatch(rb"[ \t]*\r?", body) is not None
    if plain and not line.endswith(b"\r") and len(line) + len(body) <= LIMIT and b"\n" in after:
        assert ending is Ending.CAME
