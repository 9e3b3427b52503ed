"""The native kernel against the Python reference and the independent oracle, on every shape.

Each test runs once per path this CPU has (`scalar` always, `avx2` and `avx512` where present),
so every path is held to the same answers.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import _kernel
from service.core.parsing import (
    LINE_TOO_LONG,
    NOT_AN_INTEGER,
    BadRecord,
    DetailBudget,
    LineParser,
    RegionResult,
    parse_region,
    parse_region_reference,
)
from service.core.position import Position
from tests.oracle import expected_of
from tests.test_parsing import cuts_of, expected_summary, line_starts, run_parser, summary

PATHS = list(_kernel.PATHS)
UNLIMITED = 10**9


@contextmanager
def pinned(path: str) -> Iterator[None]:
    """parse_region (and so LineParser) on one kernel path."""
    before = _kernel.path()
    _kernel.set_path(path)
    try:
        yield
    finally:
        _kernel.set_path(before)


def both(
    region: bytes, path: str, max_line_bytes: int = 4096, **options: bool | int
) -> RegionResult:
    """The kernel's answer, after checking that the Python reference gives the same one."""
    stop_at_bad = bool(options.get("stop_at_bad", False))
    details = int(options.get("bad_details", UNLIMITED))
    with pinned(path):
        kernel = parse_region(region, max_line_bytes, stop_at_bad=stop_at_bad, bad_details=details)
    reference = parse_region_reference(
        region, max_line_bytes, stop_at_bad=stop_at_bad, bad_details=details
    )
    assert kernel == reference
    return kernel


def matches_oracle(region: bytes, result: RegionResult, max_line_bytes: int) -> None:
    expected = expected_of(region, max_line_bytes=max_line_bytes, following=True)
    assert (result.lines, result.records, result.bad_records, result.sum, result.consumed) == (
        expected_summary(expected)
    )
    starts = line_starts(region)
    assert [(b.line, b.offset) for b in result.bad] == [
        (n, starts[n - 1]) for n in expected.bad_lines
    ]


# --- shapes of lines ----------------------------------------------------------------------------

DIGITS = st.text("0123456789", min_size=1, max_size=60).map(str.encode)
BLANKS = st.text(" \t", max_size=3).map(str.encode)
NUMBER_LINES = st.builds(
    lambda before, sign, digits, after, cr: before + sign + digits + after + cr,
    BLANKS,
    st.sampled_from([b"", b"+", b"-"]),
    DIGITS,
    BLANKS,
    st.sampled_from([b"", b"\r"]),
)
ODD_LINES = st.one_of(
    st.binary(max_size=12),
    st.lists(st.sampled_from([b"1", b"9", b"0", b"-", b"+", b" ", b"\r", b"\x00", b"/", b":"])).map(
        b"".join
    ),
    st.integers(min_value=39, max_value=80).map(lambda n: b"9" * n),  # the exact Python path
    st.integers(min_value=1, max_value=50).map(lambda n: b"0" * n + b"12345"),  # leading zeros
    st.sampled_from([b"", b" ", b"\r", b"\t\r", b"1 2", b"1_0", "\u0663".encode()]),
)
LINE = st.one_of(NUMBER_LINES, NUMBER_LINES, ODD_LINES).map(lambda line: line.replace(b"\n", b""))
# The vector paths take lines 64 bytes at a time past the first 128: lines of numbers in front
# put the lines drawn after them at every place of a step, near the buffer's start or not.
LEAD = st.builds(
    lambda count, width: b"7\n" * count + b"8" * width + b"\n",
    st.integers(0, 90),
    st.integers(0, 63),
)
REGIONS = st.builds(
    lambda lead, lines: lead + b"".join(line + b"\n" for line in lines),
    LEAD,
    st.lists(LINE, max_size=60),
)
LIMITS = st.one_of(st.just(4096), st.integers(min_value=1, max_value=40))


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=300, deadline=None)
@given(region=REGIONS, max_line_bytes=LIMITS, tail=st.binary(max_size=6))
def test_kernel_equals_reference_and_oracle(
    path: str, region: bytes, max_line_bytes: int, tail: bytes
) -> None:
    """Every shape of line gives the reference's and the oracle's counts, sum and bad lines."""
    tail = tail.replace(b"\n", b"")  # an unfinished last line is left for the caller
    result = both(region + tail, path, max_line_bytes)
    matches_oracle(region + tail, result, max_line_bytes)


# Lines of digits alone, 9 to 38 wide, are taken by whole blocks of 64 bytes, a line carried
# from one block into the next: blank lines among them, and a line too wide, signed, padded or
# bad, which ends the blocks, at every place of a block.
WIDE_DIGITS = st.text("0123456789", min_size=9, max_size=38).map(str.encode)
BLOCK_BREAKERS = st.sampled_from(
    [b"", b"", b"1", b"9" * 39, b"9" * 70, b"-123456789012", b"+1234567890", b" 1234567890", b"12x"]
)
WIDE_REGIONS = st.builds(
    lambda lead, lines: lead + b"".join(line + b"\n" for line in lines),
    LEAD,
    st.lists(st.one_of(WIDE_DIGITS, WIDE_DIGITS, WIDE_DIGITS, BLOCK_BREAKERS), max_size=120),
)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=300, deadline=None)
@given(region=WIDE_REGIONS, max_line_bytes=st.sampled_from([4096, 63, 64, 38, 20]))
def test_wide_lines_of_digits_alone_equal_the_reference_and_oracle(
    path: str, region: bytes, max_line_bytes: int
) -> None:
    """Lines of 9 to 38 digits, whole blocks of them or broken up, count and sum exactly."""
    matches_oracle(region, both(region, path, max_line_bytes), max_line_bytes)
    both(region, path, max_line_bytes, stop_at_bad=True, bad_details=3)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("blanks", [1, 2])
def test_blank_lines_at_every_place_of_a_block_of_wide_lines(path: str, blanks: int) -> None:
    """A blank line among lines of 19 digits is no record, at whichever byte of a block it
    falls, the first included."""
    lines = b"1234567890123456789\n" * 12
    for shift in range(1, 65):
        region = b"7\n" * 70 + b"8" * shift + b"\n" + lines + b"\n" * blanks + lines
        result = both(region, path)
        matches_oracle(region, result, 4096)
        assert result.records == 70 + 1 + 24


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=150, deadline=None)
@given(region=REGIONS, max_line_bytes=LIMITS, details=st.integers(min_value=0, max_value=70))
def test_kernel_stops_and_details_equal_the_reference(
    path: str, region: bytes, max_line_bytes: int, details: int
) -> None:
    """Under fail, and with any cap on details, the kernel stops and reports as the reference."""
    both(region, path, max_line_bytes, stop_at_bad=True, bad_details=details)
    both(region, path, max_line_bytes, bad_details=details)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=100, deadline=None)
@given(
    region=REGIONS,
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=8),
    max_line_bytes=LIMITS,
    finish=st.booleans(),
)
def test_any_chunking_gives_the_oracle(
    path: str, region: bytes, cuts: list[int], max_line_bytes: int, finish: bool
) -> None:
    """Cut into chunks anywhere, every shape sums to the oracle's answer through LineParser."""
    chunks = cuts_of(region, [cut % (len(region) + 1) for cut in cuts])
    with pinned(path):
        run = run_parser(chunks, max_line_bytes=max_line_bytes, finish=finish)
    expected = expected_of(region, max_line_bytes=max_line_bytes, following=not finish)
    assert summary(run.position) == expected_summary(expected)
    starts = line_starts(region)
    assert [(b.line, b.offset) for b in run.bad] == [(n, starts[n - 1]) for n in expected.bad_lines]


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=25, deadline=None)
@given(
    lines=st.lists(LINE, min_size=1, max_size=40),
    parts=st.integers(min_value=5, max_value=8),
    shift=st.integers(min_value=0, max_value=200),
    long_line_at=st.none() | st.integers(min_value=0, max_value=100),
)
def test_regions_split_for_threads_give_the_oracle(
    path: str, lines: list[bytes], parts: int, shift: int, long_line_at: int | None
) -> None:
    """A chunk of ordinary lines is one region; one that holds a line far longer than the rest
    is cut into pieces for the parsing threads. Either way, each region parsed and committed in
    order adds up to the oracle's answer for the whole (cuts land in every kind of line)."""
    block = b"".join(line + b"\n" for line in lines)
    data = b"7\n" * shift + block * (2 * 65536 // len(block) + 2)
    if long_line_at is not None:  # as long as all the others: longer than two pieces of five
        at = data.find(b"\n", len(data) * long_line_at // 100) + 1
        data = data[:at] + b"1" + b"0" * len(data) + b"\n" + data[at:]
    parser = LineParser(
        Position(), max_line_bytes=4096, stop_at_bad=False, details=DetailBudget(UNLIMITED)
    )
    pieces = parser.split(data, parts)
    assert (len(pieces) > 1) == (long_line_at is not None)
    assert max(len(line) + 1 for line in data.split(b"\n")) <= max(p.longest_line for p in pieces)
    bad: list[BadRecord] = []
    with pinned(path):
        for piece in pieces:
            bad.extend(parser.commit(piece, parser.parse(piece)).bad)
    expected = expected_of(data, following=True)
    assert summary(parser.position) == expected_summary(expected)
    assert [b.line for b in bad] == list(expected.bad_lines)


# --- edges the generators may miss --------------------------------------------------------------

EDGES = [
    pytest.param(b"9" * 38 + b"\n", id="38-digits"),
    pytest.param(b"-" + b"9" * 38 + b"\n", id="negative-38-digits"),
    pytest.param(b"9" * 39 + b"\n", id="39-digits-exact-path"),
    pytest.param(b"0" * 40 + b"9" * 38 + b"\n", id="38-digits-after-leading-zeros"),
    pytest.param(b"0" * 100 + b"\n", id="100-zeros"),
    pytest.param(b"9" * 39 + b"x\n", id="39-digits-then-text"),
    pytest.param(b"170141183460469231731687303715884105727\n", id="2-to-127-minus-1"),
    pytest.param((b"9" * 38 + b"\n") * 1000, id="sum-carries-past-128-bits"),
    pytest.param((b"-" + b"9" * 38 + b"\n") * 1000 + b"1\n", id="negative-sum-past-128-bits"),
    pytest.param((b"9" * 38 + b"\n" + b"-" + b"9" * 37 + b"\n") * 100, id="mixed-wide-signs"),
    pytest.param(b"1\n" * 7 + b"12345678\n", id="8-digits-near-the-start"),
    pytest.param(b"-1\n+2\n\r\n 3\r\n", id="short-lines-at-the-start"),
    pytest.param(b"x\n" * 100, id="100-bad-lines-past-the-details-table"),
    pytest.param(b"1\n" * 31 + b"\n" * 40 + b"2", id="blank-lines-and-a-tail"),
    pytest.param(b"123456789\n1234567890123456\n12345678901234567\n", id="chunk-boundaries"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("region", EDGES)
@pytest.mark.parametrize("max_line_bytes", [4096, 9, 38])
def test_edges(path: str, region: bytes, max_line_bytes: int) -> None:
    """Widths, carries, limits and positions where a kernel is most likely to be wrong."""
    result = both(region, path, max_line_bytes)
    matches_oracle(region, result, max_line_bytes)
    both(region, path, max_line_bytes, stop_at_bad=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("width", [1, 7, 8, 9, 16, 17, 38])
def test_every_byte_in_every_place_of_a_number(path: str, width: int) -> None:
    """A number with any byte in its first, middle or last place is what the oracle says."""
    lines = []
    for byte in set(range(256)) - {ord("\n")}:
        for place in {0, width // 2, width - 1}:
            digits = bytearray(b"5" * width)
            digits[place] = byte
            lines.append(bytes(digits))
    region = b"".join(line + b"\n" for line in lines)
    matches_oracle(region, both(region, path), 4096)


def test_sum_of_wide_numbers_is_exact_with_sign() -> None:
    """Numbers of 20 to 38 digits of both signs sum exactly (the 192-bit accumulators)."""
    values = [(-1) ** n * (10 ** (20 + n % 19) - n) for n in range(5000)]
    region = b"".join(b"%d\n" % value for value in values)
    assert parse_region(region, 4096, stop_at_bad=False, bad_details=0).sum == sum(values)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("signs", ["+", "-", "+-", "-+"])
def test_more_wide_numbers_than_the_lanes_hold_between_flushes(path: str, signs: str) -> None:
    """500,000 numbers of 38 nines: more than a 32-bit lane of 4-digit groups could add up
    (2^32 / 9999), so the lanes must be weighed into the exact sums on the way; every path
    gives the exact sum, whatever the signs."""
    nines = 10**38 - 1
    values = [nines if signs[n % len(signs)] == "+" else -nines for n in range(500_000)]
    region = b"".join(b"%d\n" % value for value in values)
    with pinned(path):
        result = parse_region(region, 4096, stop_at_bad=False, bad_details=0)
    assert (result.sum, result.records) == (sum(values), len(values))


def test_bad_records_carry_their_reasons() -> None:
    """The kernel reports each bad line's reason, over-long before malformed."""
    result = parse_region(b"1\nabc\n" + b"1" * 20 + b"\n", 10, stop_at_bad=False, bad_details=5)
    assert result.bad == (BadRecord(2, 2, NOT_AN_INTEGER), BadRecord(3, 6, LINE_TOO_LONG))


# --- the Python surface -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param((b"1\n", 3, 10, False, 0), "start outside", id="start-past-end"),
        pytest.param((b"1\n", -1, 10, False, 0), "start outside", id="negative-start"),
        pytest.param((b"1\n", 0, -1, False, 0), ">= 0", id="negative-limit"),
        pytest.param((b"1\n", 0, 10, False, -1), ">= 0", id="negative-details"),
    ],
)
def test_bad_arguments_raise_value_error(
    arguments: tuple[bytes, int, int, bool, int], message: str
) -> None:
    """Arguments outside the buffer or below zero are one ValueError, never a wild read."""
    with pytest.raises(ValueError, match=message):
        _kernel.scan(*arguments)


@pytest.mark.parametrize("name", ["avx9", "", "SCALAR"])
def test_an_unknown_path_is_refused(name: str) -> None:
    """Forcing a path that does not exist (or that this CPU lacks) is one ValueError."""
    with pytest.raises(ValueError, match="not available"):
        _kernel.set_path(name)
    assert _kernel.path() == _kernel.BEST


def test_the_fastest_path_is_chosen_at_run_time() -> None:
    """The default path is the fastest this CPU has, read from the CPU, not the build."""
    with open("/proc/cpuinfo") as cpuinfo:
        flags = set(cpuinfo.read().split())
    avx2 = {"avx2", "bmi1", "bmi2", "popcnt", "abm"} <= flags  # abm: LZCNT
    avx512 = avx2 and {"avx512f", "avx512bw"} <= flags
    expected = ("scalar",) + ("avx2",) * avx2 + ("avx512",) * avx512
    assert expected == _kernel.PATHS
    assert _kernel.BEST == _kernel.PATHS[-1] == _kernel.path()


@pytest.mark.parametrize("path", PATHS)
def test_a_forced_path_is_the_one_scanned_with(path: str) -> None:
    """set_path makes every later scan take that path until another is set."""
    with pinned(path):
        assert _kernel.path() == path
        assert _kernel.scan(b"1\n-2\n" * 100, 0, 4096, False, 0)[4] == -100
    assert _kernel.path() == _kernel.BEST


def test_the_scan_releases_the_gil() -> None:
    """Another Python thread keeps running while the kernel scans a large region."""
    data = b"123456\n" * (8 << 20)  # 56 MB: tens of milliseconds of scanning
    started, done = threading.Event(), threading.Event()

    def scan() -> None:
        started.set()
        _kernel.scan(data, 0, 4096, False, 0)
        done.set()

    before = sys.getswitchinterval()
    sys.setswitchinterval(0.5)  # longer than the scan: a held GIL would not be taken from it
    try:
        thread = threading.Thread(target=scan)
        thread.start()
        started.wait()
        turns = 0
        while not done.is_set():
            turns += 1
        thread.join()
    finally:
        sys.setswitchinterval(before)
    assert turns > 10_000


def test_freed_chunk_buffers_are_kept_on_glibc() -> None:
    """On glibc (this machine's C library) the allocator is told to keep chunk-sized blocks."""
    import platform

    assert _kernel.reuse_freed_memory() is (platform.libc_ver()[0] == "glibc")
