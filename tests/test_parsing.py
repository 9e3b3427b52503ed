"""The parsing core against the input rules, line by line, and against the independent oracle."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.decimal_text import decimal_of, int_of
from service.core.parsing import (
    LINE_TOO_LONG,
    NOT_AN_INTEGER,
    BadRecord,
    DetailBudget,
    LineParser,
    Parsed,
    RegionResult,
    parse_region,
)
from service.core.position import Position
from tests.oracle import Expected, expected_of

UNLIMITED = 10**9


@dataclass(frozen=True)
class Run:
    """Everything a parser reported for one input."""

    position: Position
    bad: tuple[BadRecord, ...]
    failed: BadRecord | None


def run_parser(
    chunks: Sequence[bytes],
    *,
    max_line_bytes: int = 4096,
    stop_at_bad: bool = False,
    finish: bool = True,
    start: Position | None = None,
    bad_details: int = UNLIMITED,
) -> Run:
    """Feed `chunks` one by one (then `finish`), stopping at the first failure like the worker."""
    parser = LineParser(
        start or Position(),
        max_line_bytes=max_line_bytes,
        stop_at_bad=stop_at_bad,
        details=DetailBudget(bad_details),
    )
    bad: list[BadRecord] = []
    steps: list[Callable[[], Parsed]] = [partial(parser.feed, chunk) for chunk in chunks]
    for step in [*steps, parser.finish] if finish else steps:
        batch = step()
        assert batch.position == parser.position
        bad.extend(batch.bad)
        if batch.failed is not None:
            return Run(batch.position, tuple(bad), batch.failed)
    return Run(parser.position, tuple(bad), None)


def summary(position: Position) -> tuple[int, int, int, int, int]:
    return (position.lines, position.records, position.bad_records, position.sum, position.offset)


def expected_summary(expected: Expected) -> tuple[int, int, int, int, int]:
    return (expected.lines, expected.records, expected.bad_records, expected.sum, expected.offset)


def line_starts(data: bytes) -> list[int]:
    """The offset of each line of `data` (1-based line n starts at index n - 1)."""
    return [0, *(index + 1 for index, byte in enumerate(data) if byte == ord("\n"))]


def cuts_of(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def exact_int(text: bytes) -> int:
    """int() of a digit string of any length, lifting the interpreter's cap only for this call."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return int(text)
    finally:
        sys.set_int_max_str_digits(before)


# --- one line, each input rule -------------------------------------------------------------

RECORD_LINES = [
    pytest.param(b"42", 42, id="plain"),
    pytest.param(b"  42", 42, id="spaces-before"),
    pytest.param(b"42   ", 42, id="spaces-after"),
    pytest.param(b"\t42\t", 42, id="tabs-around"),
    pytest.param(b" \t -7 \t ", -7, id="mixed-around-negative"),
    pytest.param(b"+5", 5, id="plus"),
    pytest.param(b"-5", -5, id="minus"),
    pytest.param(b"-0", 0, id="minus-zero"),
    pytest.param(b"+0", 0, id="plus-zero"),
    pytest.param(b"007", 7, id="leading-zeros"),
    pytest.param(b"-007", -7, id="negative-leading-zeros"),
    pytest.param(b"42\r", 42, id="crlf"),
    pytest.param(b" 42 \r", 42, id="crlf-with-spaces"),
    pytest.param(b"\t-3\t\r", -3, id="crlf-with-tabs"),
    pytest.param(b"9" * 30, int("9" * 30), id="30-digits"),
    pytest.param(b"-" + b"1" * 100, -int("1" * 100), id="100-digits"),
]

BLANK_LINES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="spaces"),
    pytest.param(b"\t\t", id="tabs"),
    pytest.param(b" \t ", id="spaces-and-tabs"),
    pytest.param(b"\r", id="cr-only"),
    pytest.param(b" \t \r", id="whitespace-then-cr"),
]

BAD_LINES = [
    pytest.param(b"1_000", id="underscore"),
    pytest.param(b"1.5", id="decimal-point"),
    pytest.param(b"1e3", id="exponent"),
    pytest.param(b"0x1F", id="hex"),
    pytest.param(b"1,000", id="thousands-comma"),
    pytest.param(b"1 2", id="two-numbers"),
    pytest.param(b"+", id="plus-alone"),
    pytest.param(b"-", id="minus-alone"),
    pytest.param(b"--5", id="double-minus"),
    pytest.param(b"+-5", id="plus-minus"),
    pytest.param(b"5-", id="trailing-minus"),
    pytest.param(b"- 5", id="space-after-sign"),
    pytest.param("\u0663".encode(), id="arabic-indic-digit"),
    pytest.param("\uff11\uff12".encode(), id="fullwidth-digits"),
    pytest.param("\u0967".encode(), id="devanagari-digit"),
    pytest.param("\u00b2".encode(), id="superscript-two"),
    pytest.param("\u22125".encode(), id="unicode-minus"),
    pytest.param("\u00a05".encode(), id="no-break-space"),
    pytest.param(b"\x0b5", id="vertical-tab"),
    pytest.param(b"\x0c5", id="form-feed"),
    pytest.param(b"abc", id="text"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"inf", id="inf"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"4\x002", id="nul-inside"),
    pytest.param(b"42\x00", id="nul-after"),
    pytest.param(b"\xff", id="invalid-utf8"),
    pytest.param(b"4\xff2", id="invalid-utf8-inside"),
    pytest.param(b"\xc3\x28", id="invalid-utf8-sequence"),
    pytest.param(b"\r42", id="cr-before"),
    pytest.param(b"4\r2", id="cr-inside"),
    pytest.param(b"42\r\r", id="two-crs"),
    pytest.param(b"42\r ", id="space-after-cr"),
    pytest.param(b"\r\r", id="blank-with-two-crs"),
]


@pytest.mark.parametrize(("line", "value"), RECORD_LINES)
def test_record_line(line: bytes, value: int) -> None:
    """A line the input rules call an integer counts once, with exactly its value."""
    data = b"1\n" + line + b"\n"
    run = run_parser([data])
    assert run == Run(Position(len(data), lines=2, records=2, sum=1 + value), (), None)
    assert expected_of(data).sum == 1 + value


@pytest.mark.parametrize("line", BLANK_LINES)
def test_blank_line(line: bytes) -> None:
    """A blank or whitespace-only line is consumed but is neither a record nor a bad record."""
    data = b"1\n" + line + b"\n"
    run = run_parser([data])
    assert run == Run(Position(len(data), lines=2, records=1, sum=1), (), None)
    assert expected_of(data).bad_lines == ()


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_line(line: bytes) -> None:
    """Anything else is one bad record, reported with its 1-based line number and offset."""
    data = b"1\n" + line + b"\n3\n"
    run = run_parser([data])
    bad = BadRecord(2, 2, NOT_AN_INTEGER)
    assert run == Run(Position(len(data), lines=3, records=2, bad_records=1, sum=4), (bad,), None)
    assert expected_of(data).bad_lines == (2,)


@pytest.mark.parametrize("line", BAD_LINES)
def test_bad_line_under_fail(line: bytes) -> None:
    """Under on_bad_record=fail a bad line stops the run just before it, naming it."""
    data = b"1\n" + line + b"\n3\n"
    run = run_parser([data], stop_at_bad=True)
    assert run == Run(Position(2, lines=1, records=1, sum=1), (), BadRecord(2, 2, NOT_AN_INTEGER))


@pytest.mark.parametrize("ending", [b"\n", b""], ids=["newline", "end-of-file"])
@pytest.mark.parametrize(
    ("line", "value"),
    [
        pytest.param(b"1234", 1234, id="exactly-the-limit"),
        pytest.param(b"12345", None, id="limit-plus-one"),
        pytest.param(b"123\r", 123, id="cr-counts-at-limit"),
        pytest.param(b"1234\r", None, id="cr-counts-over-limit"),
        pytest.param(b" 12 ", 12, id="spaces-count"),
        pytest.param(b"    ", "blank", id="blank-at-limit"),
        pytest.param(b"     ", None, id="blank-over-limit"),
        pytest.param(b"   \r", "blank", id="blank-cr-at-limit"),
        pytest.param(b"    \r", None, id="blank-cr-over-limit"),
        pytest.param(b"abcde", None, id="text-over-limit"),
        pytest.param(b"9" * 5000, None, id="far-over-limit"),
    ],
)
def test_line_length_limit(line: bytes, value: int | str | None, ending: bytes) -> None:
    """A line over max_line_bytes (the '\\r' counts, the '\\n' not) is bad, whatever it holds."""
    data = line + ending
    run = run_parser([data], max_line_bytes=4)
    if value is None:
        expected = Position(len(data), lines=1, bad_records=1)
        assert run == Run(expected, (BadRecord(1, 0, LINE_TOO_LONG),), None)
    elif value == "blank":
        assert run == Run(Position(len(data), lines=1), (), None)
    else:
        assert run == Run(Position(len(data), lines=1, records=1, sum=int(value)), (), None)
    assert expected_summary(expected_of(data, max_line_bytes=4)) == summary(run.position)


@pytest.mark.parametrize("sign", [b"", b"+", b"-"])
@pytest.mark.parametrize("digits", [100, 3999, 4000, 4001, 4300, 4301, 5000, 9001])
def test_long_numbers_are_exact(digits: int, sign: bytes, default_int_limit: None) -> None:
    """A number of any length adds exactly, even past Python's default int-string limit."""
    number = sign + (b"1234567890" * (digits // 10 + 1))[:digits]
    data = b"7\n" + number + b"\n-7\n"
    run = run_parser([data], max_line_bytes=10_000)
    assert run.position == Position(len(data), lines=3, records=3, sum=exact_int(number))


# --- line endings, chunks and the unfinished last line ----------------------------------------


@pytest.mark.parametrize(
    ("tail", "lines", "records", "bad_records", "total"),
    [
        pytest.param(b"22", 2, 2, 0, 23, id="record"),
        pytest.param(b" -22 ", 2, 2, 0, -21, id="record-with-spaces"),
        pytest.param(b"22\r", 2, 2, 0, 23, id="record-with-cr"),
        pytest.param(b"  ", 2, 1, 0, 1, id="blank"),
        pytest.param(b"\r", 2, 1, 0, 1, id="cr"),
        pytest.param(b"2x", 2, 1, 1, 1, id="bad"),
        pytest.param(b"", 1, 1, 0, 1, id="nothing"),
    ],
)
def test_last_line_without_newline(
    tail: bytes, lines: int, records: int, bad_records: int, total: int
) -> None:
    """A last line without '\\n' is held while the input may grow and is a line at finish."""
    parser = LineParser(Position(), max_line_bytes=4096, stop_at_bad=False)
    held = parser.feed(b"1\n" + tail)
    assert held.position == Position(2, lines=1, records=1, sum=1)
    finished = parser.finish()
    assert finished.position == Position(2 + len(tail), lines, records, bad_records, total)
    assert summary(finished.position) == expected_summary(expected_of(b"1\n" + tail))


def test_take_unfinished_hands_over_the_held_tail() -> None:
    """The held start of an unfinished line is handed over once, with its offset."""
    parser = LineParser(Position(), max_line_bytes=4096, stop_at_bad=False)
    parser.feed(b"1\n2")
    parser.feed(b"3")
    assert parser.split_offset == 4
    assert parser.take_unfinished() == (2, b"23")
    assert parser.take_unfinished() is None
    assert parser.position == Position(2, lines=1, records=1, sum=1)


MIXED = b" -12\r\n+34\n\n\t5x\n  \n007\n-\n12345678\n9"


@pytest.mark.parametrize("finish", [True, False])
def test_every_single_cut(finish: bool) -> None:
    """A line split across two chunks at any byte gives the same result as one chunk."""
    whole = run_parser([MIXED], max_line_bytes=6, finish=finish)
    expected = expected_of(MIXED, max_line_bytes=6, following=not finish)
    assert summary(whole.position) == expected_summary(expected)
    assert tuple(b.line for b in whole.bad) == expected.bad_lines
    for cut in range(len(MIXED) + 1):
        assert run_parser(cuts_of(MIXED, [cut]), max_line_bytes=6, finish=finish) == whole


def test_every_pair_of_cuts() -> None:
    """Three chunks cut anywhere, down to single bytes, give the same result as one chunk."""
    whole = run_parser([MIXED], max_line_bytes=6)
    for first in range(len(MIXED) + 1):
        for second in range(first, len(MIXED) + 1):
            assert run_parser(cuts_of(MIXED, [first, second]), max_line_bytes=6) == whole


def test_byte_by_byte() -> None:
    """Feeding one byte at a time gives the oracle's answer, bad offsets included."""
    run = run_parser([MIXED[i : i + 1] for i in range(len(MIXED))], max_line_bytes=6)
    starts = line_starts(MIXED)
    expected = expected_of(MIXED, max_line_bytes=6)
    assert summary(run.position) == expected_summary(expected)
    assert [(b.line, b.offset) for b in run.bad] == [(n, starts[n - 1]) for n in expected.bad_lines]


@pytest.mark.parametrize("cut", range(14))
def test_offset_after_a_long_line_is_past_its_newline(cut: int) -> None:
    """Skipping an over-long line, however it was chunked, resumes exactly after its '\\n'."""
    data = b"123456789\n5\n7"
    parser = LineParser(Position(), max_line_bytes=4, stop_at_bad=False)
    for chunk in cuts_of(data, [cut]):
        parser.feed(chunk)
    assert parser.position == Position(12, lines=2, records=1, bad_records=1, sum=5)
    assert parser.take_unfinished() == (12, b"7")


# --- line numbers, offsets and the cap on details ---------------------------------------------


def test_bad_records_number_lines_from_the_start_after_resume() -> None:
    """Bad line numbers and offsets count from the file's start when resuming mid-file."""
    data = b"1\n2\nx\n3\n\ny\n4"
    whole = run_parser([data])
    assert whole.bad == (BadRecord(3, 4, NOT_AN_INTEGER), BadRecord(6, 9, NOT_AN_INTEGER))
    for resume_at in (0, 2, 4):  # line starts before the first bad line
        before = run_parser([data[:resume_at]], finish=False).position
        resumed = run_parser([data[resume_at:]], start=before)
        assert resumed == whole


def test_failure_after_resume_names_the_line_from_the_start() -> None:
    """Under fail, the failing line's number and offset count from the file's start."""
    start = Position(offset=1000, lines=300, records=299, bad_records=1, sum=7)
    run = run_parser([b"1\n\nx\n2\n"], start=start, stop_at_bad=True)
    assert run.failed == BadRecord(303, 1003, NOT_AN_INTEGER)
    assert run.position == Position(1003, lines=302, records=300, bad_records=1, sum=8)


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1 << 20])
def test_bad_record_details_are_capped_and_the_count_is_exact(chunk_size: int) -> None:
    """At most 100 bad records are detailed per parser; the count covers all of them."""
    lines = [b"x" * 40 if i % 3 == 0 else b"bad" for i in range(250)]  # some too long
    data = b"".join(b"%d\n%s\n" % (i, line) for i, line in enumerate(lines))
    parser = LineParser(Position(), max_line_bytes=16, stop_at_bad=False)
    details: list[BadRecord] = []
    for start in range(0, len(data), chunk_size):
        details.extend(parser.feed(data[start : start + chunk_size]).bad)
    details.extend(parser.finish().bad)
    assert parser.position.bad_records == 250
    assert parser.position.records == 250
    assert [b.line for b in details] == list(range(2, 201, 2))
    starts = line_starts(data)
    assert [b.offset for b in details] == [starts[b.line - 1] for b in details]


def test_split_parse_commit_in_separate_steps() -> None:
    """Parsing every region before committing any (as threads would) changes nothing."""
    data = b"1\nx\n" * 50 + b"123456789\n" + b"2\n\n" * 50
    chunks = cuts_of(data, range(0, len(data), 33))
    parser = LineParser(Position(), max_line_bytes=8, stop_at_bad=False, details=DetailBudget(5))
    regions = [region for chunk in chunks for region in parser.split(chunk)]
    results = [parser.parse(region) for region in reversed(regions)][::-1]
    shown = [
        bad for r, res in zip(regions, results, strict=True) for bad in parser.commit(r, res).bad
    ]
    assert run_parser(chunks, max_line_bytes=8, bad_details=5) == Run(
        parser.position, tuple(shown), None
    )
    assert len(shown) == 5


def test_parse_region_is_region_relative() -> None:
    """parse_region numbers lines and offsets from the region's start and keeps few details."""
    result = parse_region(b"1\n\nx\n-2\n?\n", 4096, stop_at_bad=False, bad_details=1)
    assert result == RegionResult(
        consumed=10,
        lines=5,
        records=2,
        bad_records=2,
        sum=-1,
        bad=(BadRecord(3, 3, "not_an_integer"),),
    )


def test_parse_region_stops_at_bad() -> None:
    """Under stop_at_bad a region's result ends just before its first bad line."""
    result = parse_region(b"1\n\nx\n-2\n", 4096, stop_at_bad=True, bad_details=1)
    assert result == RegionResult(
        consumed=3, lines=2, records=1, bad_records=0, sum=1, failed=BadRecord(3, 3, NOT_AN_INTEGER)
    )


# --- on_bad_record = fail -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "max_line_bytes", "failed", "position"),
    [
        pytest.param(
            b"1\n2\nx\n3\n",
            4096,
            BadRecord(3, 4, NOT_AN_INTEGER),
            Position(4, lines=2, records=2, sum=3),
            id="text",
        ),
        pytest.param(
            b"\n1\n 2 \n1.5\n4\n",
            4096,
            BadRecord(4, 7, NOT_AN_INTEGER),
            Position(7, lines=3, records=2, sum=3),
            id="after-blank",
        ),
        pytest.param(b"x\n1\n", 4096, BadRecord(1, 0, NOT_AN_INTEGER), Position(), id="first"),
        pytest.param(
            b"1\n2\n3x",
            4096,
            BadRecord(3, 4, NOT_AN_INTEGER),
            Position(4, lines=2, records=2, sum=3),
            id="last-without-newline",
        ),
        pytest.param(
            b"1\n" + b"9" * 10 + b"\n2\n",
            4,
            BadRecord(2, 2, LINE_TOO_LONG),
            Position(2, lines=1, records=1, sum=1),
            id="too-long",
        ),
        pytest.param(
            b"1\n\n" + b" " * 10,
            4,
            BadRecord(3, 3, LINE_TOO_LONG),
            Position(3, lines=2, records=1, sum=1),
            id="too-long-blank-at-end",
        ),
    ],
)
def test_fail_stops_before_the_bad_line(
    data: bytes, max_line_bytes: int, failed: BadRecord, position: Position
) -> None:
    """Under fail the position stops before the bad line, whatever the chunking."""
    for cut in range(len(data) + 1):
        run = run_parser(cuts_of(data, [cut]), max_line_bytes=max_line_bytes, stop_at_bad=True)
        assert run == Run(position, (), failed)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"1\n12345"],
        [b"1\n123", b"45"],
        [b"1\n", b"1", b"2", b"3", b"4", b"5"],
        [b"1", b"\n1234", b"5678"],
    ],
)
def test_over_long_line_fails_before_its_newline(chunks: list[bytes]) -> None:
    """Under fail an over-long line stops the run once past the limit, before any '\\n'."""
    parser = LineParser(Position(), max_line_bytes=4, stop_at_bad=True)
    batches = [parser.feed(chunk) for chunk in chunks]
    assert [batch.failed for batch in batches[:-1]] == [None] * (len(chunks) - 1)
    assert batches[-1].failed == BadRecord(2, 2, LINE_TOO_LONG)
    assert batches[-1].position == Position(2, lines=1, records=1, sum=1)


# --- bounded memory -----------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n42\n", b""], ids=["newline", "end-of-file"])
def test_memory_stays_bounded_on_a_50_mb_line(ending: bytes) -> None:
    """A 50 MB line fed in 64 KiB chunks is one bad record, held in far less than its size."""
    chunk = b"7" * 65536
    count = 800
    parser = LineParser(Position(), max_line_bytes=4096, stop_at_bad=False)
    tracemalloc.start()
    try:
        parser.feed(b"1\n")
        for _ in range(count):
            parser.feed(chunk)
        batch = parser.feed(ending) if ending else parser.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # 1 MiB, against a 52 MB line
    records, total = (2, 43) if ending else (1, 1)
    size = 2 + count * len(chunk) + len(ending)
    assert batch.bad == (BadRecord(2, 2, LINE_TOO_LONG),)
    assert parser.position == Position(
        size, lines=1 + records, records=records, bad_records=1, sum=total
    )


# --- property: any bytes, any chunking, the oracle's answer -------------------------------------

_PIECES = [
    *(bytes([d]) for d in b"0123456789"),
    b"+",
    b"-",
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"a",
    b"e",
    b"_",
    b".",
    "\u0663".encode(),
]
INPUTS = st.one_of(
    st.lists(st.sampled_from(_PIECES), max_size=120).map(b"".join),
    st.binary(max_size=120),
)
LIMITS = st.one_of(st.just(4096), st.integers(min_value=1, max_value=8))


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(INPUTS)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=8))
    return data, cuts_of(data, cuts)


@settings(max_examples=400, deadline=None)
@given(case=chunked(), max_line_bytes=LIMITS, finish=st.booleans())
def test_parser_matches_oracle(
    case: tuple[bytes, list[bytes]], max_line_bytes: int, finish: bool
) -> None:
    """Any bytes cut anywhere give the oracle's lines, records, bad lines, sum and offset."""
    data, chunks = case
    run = run_parser(chunks, max_line_bytes=max_line_bytes, finish=finish)
    expected = expected_of(data, max_line_bytes=max_line_bytes, following=not finish)
    assert summary(run.position) == expected_summary(expected)
    starts = line_starts(data)
    assert [(b.line, b.offset) for b in run.bad] == [(n, starts[n - 1]) for n in expected.bad_lines]
    assert run.failed is None


@settings(max_examples=300, deadline=None)
@given(case=chunked(), max_line_bytes=LIMITS, finish=st.booleans())
def test_parser_under_fail_matches_oracle(
    case: tuple[bytes, list[bytes]], max_line_bytes: int, finish: bool
) -> None:
    """Under fail, any input stops exactly before the oracle's first bad line, or not at all."""
    data, chunks = case
    run = run_parser(chunks, max_line_bytes=max_line_bytes, stop_at_bad=True, finish=finish)
    expected = expected_of(data, max_line_bytes=max_line_bytes, following=not finish)
    tail = data[expected.offset :]
    starts = line_starts(data)
    if expected.bad_lines:
        line = expected.bad_lines[0]
        before = expected_of(data[: starts[line - 1]], max_line_bytes=max_line_bytes)
        assert summary(run.position) == expected_summary(before)
        assert run.failed is not None
        assert (run.failed.line, run.failed.offset) == (line, starts[line - 1])
    elif len(tail) > max_line_bytes:  # an unfinished line already known to be too long
        assert summary(run.position) == expected_summary(expected)
        assert run.failed == BadRecord(expected.lines + 1, expected.offset, LINE_TOO_LONG)
    else:
        assert summary(run.position) == expected_summary(expected)
        assert run.failed is None
    assert run.bad == ()


@settings(max_examples=300, deadline=None)
@given(
    case=chunked(),
    max_line_bytes=LIMITS,
    stale=st.lists(st.sampled_from([b"\n", b"7", b"x"]), min_size=1, max_size=20).map(b"".join),
)
def test_a_chunk_in_a_bigger_buffer_splits_as_its_bytes_alone(
    case: tuple[bytes, list[bytes]], max_line_bytes: int, stale: bytes
) -> None:
    """A chunk read into the start of a reused buffer (`size` bytes of it) gives the regions and
    the held line of those bytes alone: what the buffer held before is never parsed."""
    _, chunks = case
    alone = LineParser(Position(), max_line_bytes=max_line_bytes, stop_at_bad=False)
    in_buffer = LineParser(Position(), max_line_bytes=max_line_bytes, stop_at_bad=False)
    for chunk in chunks:
        expected = [(bytes(r.data), r.offset, r.parsed) for r in alone.split(chunk)]
        buffer = bytearray(chunk + stale)
        regions = in_buffer.split(buffer, size=len(chunk))
        assert [(bytes(r.data), r.offset, r.parsed) for r in regions] == expected
        assert in_buffer.split_offset == alone.split_offset
    assert in_buffer.finish() == alone.finish()


@settings(max_examples=300, deadline=None)
@given(case=chunked(), max_line_bytes=LIMITS, resume_line=st.integers(min_value=0))
def test_resume_from_any_line_start_matches_one_run(
    case: tuple[bytes, list[bytes]], max_line_bytes: int, resume_line: int
) -> None:
    """Stopping at any line start and resuming from that Position gives the uninterrupted run."""
    data, chunks = case
    starts = line_starts(data)
    resume_at = starts[resume_line % len(starts)]
    whole = run_parser(chunks, max_line_bytes=max_line_bytes)
    before = run_parser([data[:resume_at]], max_line_bytes=max_line_bytes, finish=False)
    assert before.position.offset == resume_at
    after = run_parser([data[resume_at:]], max_line_bytes=max_line_bytes, start=before.position)
    assert after.position == whole.position
    assert before.bad + after.bad == whole.bad


@pytest.mark.parametrize("length", [1, 2999, 3000, 3001, 6000, 9001, 9033, 40_000, 123_457])
def test_long_numbers_convert_exactly_both_ways(length: int) -> None:
    """int_of and decimal_of equal int() and str() at every length around their split points."""
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # the plain, quadratic conversions are the oracle here
    try:
        digits = "".join(str((index * 7 + length) % 10) for index in range(length))
        digits = "8" + digits[1:]
        for text in (digits, "-" + digits, "+" + digits):
            assert int_of(text) == int(text) == int_of(text.encode())
        value = int(digits)
        for number in (value, -value, 2 ** (3 * length), 10**length, 10**length - 1):
            assert decimal_of(number) == str(number)
            assert decimal_of(number) == str(number)  # once more, as remembered
    finally:
        sys.set_int_max_str_digits(previous)


@given(st.lists(st.sampled_from([b"12", b"-3", b"\n", b" ", b"x", b"\r", b"+"]), max_size=60))
@settings(max_examples=200)
def test_a_chunk_buffer_reused_after_each_feed_changes_nothing(pieces: list[bytes]) -> None:
    """The worker reads chunks into buffers it reuses once a chunk is parsed: a line begun in
    one chunk must survive its buffer being overwritten by the next read."""
    data = b"".join(pieces)
    chunks = cuts_of(data, range(0, len(data), 5))
    parser = LineParser(Position(), max_line_bytes=16, stop_at_bad=False)
    buffer = bytearray(5)
    for chunk in chunks:
        buffer[:] = chunk  # the next read lands where the last chunk was
        parser.feed(buffer if len(chunk) == 5 else bytes(buffer))
        buffer[:] = b"\xff" * len(buffer)
    parser.finish()
    assert parser.position == run_parser(chunks, max_line_bytes=16).position
