"""The parsing core: byte chunks in, records and a running `Position` out. No I/O, no clock.

Rule 1: a line is consumed only when its '\\n' has been seen, or at the end of an input that is
        not followed (`finish`). `Position.offset` is always the start of the next unconsumed line.
Rule 2: a line is a record when it is optional spaces or tabs, an optional sign, ASCII digits,
        optional spaces or tabs, and an optional '\\r'. Blank lines (spaces, tabs, one '\\r') are
        neither records nor bad records. Everything else is a bad record, and so is any line
        longer than `max_line_bytes` (the '\\r' counts, the '\\n' does not), whatever it holds.
Rule 3: memory is bounded: at most `max_line_bytes` bytes of an unfinished line are held. Past
        that the line is known to be bad, and its bytes are dropped as they arrive.
Rule 4: work is split in two so it can run in parallel: `split` (cheap, in order) cuts chunks
        into regions of whole lines; `parse_region` (pure, any thread) parses one region;
        `commit` (in order) applies a region's result to the position.
Rule 5: `parse_region` runs the native kernel (service/core/_kernel.c), which releases the GIL and
        sums numbers of up to 38 digits itself; a longer number is handed back and converted
        here. `parse_region_reference`, the same rules line by line in Python, is the
        reference the kernel is held to (tests/test_kernel.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import pairwise

from service.core import _kernel
from service.core.decimal_text import int_of
from service.core.position import Position

__all__ = [
    "BadRecord",
    "DetailBudget",
    "LineParser",
    "Parsed",
    "Region",
    "RegionResult",
    "line_values",
    "parse_region",
    "parse_region_reference",
]

LINE_TOO_LONG = "line_too_long"
NOT_AN_INTEGER = "not_an_integer"
BAD_RECORD_DETAILS_PER_RUN = 100

_RECORD = re.compile(rb"[ \t]*([+-]?[0-9]+)[ \t]*\r?")
_BLANK = re.compile(rb"[ \t]*\r?")
_REASONS = {_kernel.NOT_AN_INTEGER: NOT_AN_INTEGER, _kernel.LINE_TOO_LONG: LINE_TOO_LONG}
MIN_PIECE_BYTES = 65536  # a smaller region is parsed at once: a thread hop would cost more

Buffer = bytes | bytearray | memoryview  # a region is often a view of a larger chunk, never a copy


@dataclass(frozen=True)
class BadRecord:
    """A line that is not a record: its 1-based number, its start offset, and why."""

    line: int
    offset: int
    reason: str


@dataclass(frozen=True)
class RegionResult:
    """What a region of whole lines adds up to. Line numbers and offsets are region-relative."""

    consumed: int
    lines: int
    records: int
    bad_records: int
    sum: int
    bad: tuple[BadRecord, ...] = ()
    failed: BadRecord | None = None


@dataclass(frozen=True)
class Region:
    """Whole lines cut from the input at `offset`, or a result already known (`parsed`)."""

    data: Buffer
    offset: int
    parsed: RegionResult | None = None
    line_bound: int | None = None  # no line is longer; None: known only as the whole region
    ends_input: bool = False  # its last '\n' was added: the input's last line had none

    @property
    def longest_line(self) -> int:
        """At least the length of its longest line: how long its parse may hold a thread."""
        return len(self.data) if self.line_bound is None else self.line_bound


@dataclass(frozen=True)
class Parsed:
    """The position after a commit, the bad records to report, and the one that stopped the run."""

    position: Position
    bad: tuple[BadRecord, ...] = ()
    failed: BadRecord | None = None


def _classify(line: bytes, max_line_bytes: int) -> int | str | None:
    """A line's value, None for a blank line, or the reason it is a bad record."""
    if len(line) > max_line_bytes:
        return LINE_TOO_LONG
    match = _RECORD.fullmatch(line)
    if match:
        return int_of(match.group(1))
    if _BLANK.fullmatch(line):
        return None
    return NOT_AN_INTEGER


def parse_region(
    region: Buffer, max_line_bytes: int, *, stop_at_bad: bool, bad_details: int
) -> RegionResult:
    """Parse whole lines (`region` ends in '\\n'); keep up to `bad_details` bad records."""
    start = lines = records = bad_records = total = 0
    bad: list[BadRecord] = []
    while True:
        end, scanned, found, bad_found, subtotal, stop, newline, reason, details = _kernel.scan(
            region,
            start,
            max_line_bytes,
            stop_at_bad,
            bad_details - len(bad),
        )
        bad.extend(
            BadRecord(lines + line, offset, _REASONS[code]) for line, offset, code in details
        )
        lines += scanned
        records += found
        bad_records += bad_found
        total += subtotal
        if stop == _kernel.STOP_END:
            return RegionResult(end, lines, records, bad_records, total, tuple(bad))
        if stop == _kernel.STOP_BAD:
            failed = BadRecord(lines + 1, end, _REASONS[reason])
            return RegionResult(end, lines, records, bad_records, total, (), failed)
        if stop == _kernel.STOP_LONG_NUMBER:  # past 38 digits: Python's exact conversion
            value = _classify(bytes(region[end:newline]), max_line_bytes)
            assert isinstance(value, int), "the kernel hands back only well-formed numbers"
            lines += 1
            records += 1
            total += value
            end = newline + 1
        start = end  # STOP_DETAILS_FULL: the kernel's table was full; scan on from that line


def parse_region_reference(
    region: bytes, max_line_bytes: int, *, stop_at_bad: bool, bad_details: int
) -> RegionResult:
    """`parse_region` line by line in Python: the reference the kernel is tested against."""
    lines = region.split(b"\n")
    lines.pop()  # the empty piece after the region's last '\n'
    offset = records = bad_records = total = 0
    bad: list[BadRecord] = []
    for index, line in enumerate(lines):
        kind = _classify(line, max_line_bytes)
        if isinstance(kind, int):
            total += kind
            records += 1
        elif kind is not None:
            record = BadRecord(index + 1, offset, kind)
            if stop_at_bad:
                return RegionResult(offset, index, records, bad_records, total, (), record)
            bad_records += 1
            if len(bad) < bad_details:
                bad.append(record)
        offset += len(line) + 1
    return RegionResult(offset, len(lines), records, bad_records, total, tuple(bad))


def line_values(region: Buffer, max_line_bytes: int) -> Iterator[tuple[int, int | str | None]]:
    """Each line of a region of whole lines: (its length with its '\\n', its value, None for a
    blank line, or the reason it is a bad record)."""
    for line in bytes(region).split(b"\n")[:-1]:
        yield len(line) + 1, _classify(line, max_line_bytes)


def _cut(
    chunk: bytes | bytearray, start: int, end: int, chunk_offset: int, parts: int
) -> list[Region]:
    """The whole lines `chunk[start:end]`: one region when no line is longer than two of
    `parts` pieces of about equal size; otherwise those pieces, as views, for threads to
    parse at once (a line far longer than the rest may take seconds to convert)."""
    view = memoryview(chunk)
    parts = max(1, min(parts, (end - start) // MIN_PIECE_BYTES))
    bounds = [start]
    for part in range(1, parts):
        begin = bounds[-1]
        cut = chunk.find(b"\n", begin + (end - begin) // (parts - part + 1), end)
        if cut < 0 or cut + 1 >= end:
            break
        bounds.append(cut + 1)
    bounds.append(end)
    pieces = list(pairwise(bounds))
    longest = max(after - before for before, after in pieces)
    if longest <= 2 * ((end - start) // parts):  # ordinary lines: one call parses them all
        return [Region(view[start:end], chunk_offset + start, line_bound=longest)]
    return [Region(view[before:after], chunk_offset + before) for before, after in pieces]


class DetailBudget:
    """How many more bad records this run shows in detail (line, offset, reason). One budget
    per run, shared by every partition of a source, so a flood of bad lines costs neither
    memory nor a log line each; the counts stay exact beyond it."""

    def __init__(self, count: int = BAD_RECORD_DETAILS_PER_RUN) -> None:
        self.left = count

    def take(self, found: tuple[BadRecord, ...]) -> tuple[BadRecord, ...]:
        """The first of `found` that the budget still allows, taken from it."""
        shown = found[: self.left]
        self.left -= len(shown)
        return shown


class LineParser:
    """Cuts a byte stream into regions of whole lines and keeps the running position."""

    def __init__(
        self,
        start: Position,
        *,
        max_line_bytes: int,
        stop_at_bad: bool,
        details: DetailBudget | None = None,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.stop_at_bad = stop_at_bad
        self._position = start
        self._details = details or DetailBudget()
        # The start of the current unfinished line, grown in place: a long one is copied once.
        self._held = bytearray()
        self._dropped = 0  # bytes of an over-long unfinished line already thrown away
        self._split_offset = start.offset  # where the next byte given to `split` sits

    @property
    def position(self) -> Position:
        return self._position

    @property
    def holds_a_line_start(self) -> bool:
        """Whether the start of an unfinished line is held, waiting for the rest of it."""
        return bool(self._held)

    @property
    def split_offset(self) -> int:
        """The input offset just past the last byte handed to `split`."""
        return self._split_offset

    def split(
        self, chunk: bytes | bytearray, parts: int = 1, *, size: int | None = None
    ) -> list[Region]:
        """Cut the next chunk of input, its first `size` bytes (all by default), into regions of
        whole lines, in input order.

        The chunk is not copied: its whole lines become up to `parts` views of it (for threads
        to parse at once), and a line begun in an earlier chunk a small region of its own. Only
        the start of an unfinished line is kept past the call, as a copy.
        """
        end = len(chunk) if size is None else size
        regions: list[Region] = []
        chunk_offset = self._split_offset
        self._split_offset += end
        begin = 0
        if self._dropped:
            first = chunk.find(b"\n", 0, end)
            if first < 0:
                self._dropped += end
                return regions
            line_start = chunk_offset - self._dropped
            regions.append(self._too_long(line_start, consumed=self._dropped + first + 1))
            self._dropped = 0
            begin = first + 1
        last = chunk.rfind(b"\n", begin, end)  # the held start of a line never holds one
        if last < 0:
            self._held += memoryview(chunk)[begin:end]
        else:
            if self._held:
                first = chunk.find(b"\n", begin, end)
                line_start = chunk_offset + begin - len(self._held)
                self._held += memoryview(chunk)[begin : first + 1]
                regions.append(Region(self._held, line_start))  # a new one is held below
                begin = first + 1
            regions.extend(_cut(chunk, begin, last + 1, chunk_offset, parts))
            self._held = bytearray(memoryview(chunk)[last + 1 : end])  # a copy: buffers are reused
        if len(self._held) > self.max_line_bytes:
            # Known bad before its end arrives: under "fail" that stops the run right here.
            self._dropped = len(self._held)
            self._held = bytearray()
            if self.stop_at_bad:
                regions.append(self._too_long(self._split_offset - self._dropped, consumed=0))
        return regions

    def _too_long(self, offset: int, consumed: int) -> Region:
        # `consumed` 0 means the line has not ended yet: only a stop can come of it.
        record = BadRecord(1, 0, LINE_TOO_LONG)
        if self.stop_at_bad:
            return Region(b"", offset, RegionResult(0, 0, 0, 0, 0, (), record))
        return Region(b"", offset, RegionResult(consumed, 1, 0, 1, 0, (record,)))

    def parse(self, region: Region) -> RegionResult:
        """The result of one region; pure, so it may run in any thread."""
        if region.parsed is not None:
            return region.parsed
        result = parse_region(
            region.data,
            self.max_line_bytes,
            stop_at_bad=self.stop_at_bad,
            bad_details=self._details.left,
        )
        if region.ends_input and result.failed is None:  # the '\n' was never in the input
            result = replace(result, consumed=result.consumed - 1)
        return result

    def commit(self, region: Region, result: RegionResult) -> Parsed:
        """Apply one region's result; regions must be committed in the order `split` made them."""
        before = self._position
        self._position = before.advance(
            consumed=result.consumed,
            lines=result.lines,
            records=result.records,
            bad_records=result.bad_records,
            total=result.sum,
        )
        shown = self._details.take(result.bad)
        bad = tuple(
            BadRecord(before.lines + r.line, region.offset + r.offset, r.reason) for r in shown
        )
        failed = None
        if result.failed is not None:
            failed = BadRecord(
                before.lines + result.failed.line,
                region.offset + result.failed.offset,
                result.failed.reason,
            )
        return Parsed(self._position, bad, failed)

    def feed(self, chunk: bytes | bytearray) -> Parsed:
        """Split, parse and commit a chunk in one step; stops at the first failure."""
        return self._run(self.split(chunk))

    def take_unfinished(self) -> tuple[int, bytes | bytearray] | None:
        """The held start of an unfinished line, with its offset, handed over and forgotten."""
        if not self._held:
            return None
        held, self._held = self._held, bytearray()  # handed over, not copied
        return self._split_offset - len(held), held

    def final_regions(self) -> list[Region]:
        """The input ended: its last line, unfinished by a '\\n', is a line all the same. Its
        region, to parse (in any thread: a number of millions of digits takes seconds) and
        commit like the others."""
        if self._dropped:
            size, self._dropped = self._dropped, 0
            return [self._too_long(self._split_offset - size, consumed=size)]
        unfinished = self.take_unfinished()
        if unfinished is None:
            return []
        line_start, held = unfinished
        held += b"\n"
        return [Region(held, line_start, ends_input=True)]

    def finish(self) -> Parsed:
        """`final_regions` parsed and committed in this thread."""
        return self._run(self.final_regions())

    def _run(self, regions: list[Region]) -> Parsed:
        bad: list[BadRecord] = []
        for region in regions:
            batch = self.commit(region, self.parse(region))
            bad.extend(batch.bad)
            if batch.failed is not None:
                return Parsed(batch.position, tuple(bad), batch.failed)
        return Parsed(self._position, tuple(bad))
