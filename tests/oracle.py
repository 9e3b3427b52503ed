"""An independent oracle for the input rules, written plainly, line by line.

A line is a record when it is optional spaces or tabs, an optional sign, ASCII digits, optional
spaces or tabs and an optional '\\r'; blank lines count for nothing; everything else, and any line
longer than the limit, is a bad record. It shares no code with `service`: a test that compares
the worker with it compares two independent readings of those rules.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Expected", "expected_of", "expected_of_file", "expected_of_files"]


@dataclass(frozen=True)
class Expected:
    lines: int
    records: int
    bad_records: int
    sum: int
    offset: int
    bad_lines: tuple[int, ...]


def _value(line: bytes) -> int | str | None:
    """The line's integer, None if blank, "bad" otherwise (line length already checked)."""
    body = line[:-1] if line.endswith(b"\r") else line
    text = body.strip(b" \t")
    if not text:
        return None
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    if digits and digits.isdigit() and digits.isascii():
        sign = -1 if text[:1] == b"-" else 1
        return sign * int(digits.decode("ascii"))
    return "bad"


def expected_of(data: bytes, *, max_line_bytes: int = 4096, following: bool = False) -> Expected:
    """What the worker must report for `data` read to its end (held tail when `following`)."""
    pieces = data.split(b"\n")
    tail = pieces.pop()  # bytes after the last '\n' ('' when the input ends with one)
    lines = list(pieces)
    offset = len(data) - len(tail)
    if tail and not following:
        lines.append(tail)
        offset = len(data)
    records = bad = total = 0
    bad_lines: list[int] = []
    for number, line in enumerate(lines, start=1):
        value = "bad" if len(line) > max_line_bytes else _value(line)
        if value is None:
            continue
        if value == "bad":
            bad += 1
            bad_lines.append(number)
        else:
            assert isinstance(value, int)
            records += 1
            total += value
    return Expected(len(lines), records, bad, total, offset, tuple(bad_lines))


def expected_of_file(path: str, **options: object) -> Expected:
    with open(path, "rb") as handle:
        return expected_of(handle.read(), **options)  # type: ignore[arg-type]


def expected_of_files(contents: list[bytes]) -> Expected:
    """What several files add up to, each read on its own (a line never spans two files)."""
    each = [expected_of(data) for data in contents]
    return Expected(
        sum(e.lines for e in each),
        sum(e.records for e in each),
        sum(e.bad_records for e in each),
        sum(e.sum for e in each),
        sum(e.offset for e in each),
        (),
    )
