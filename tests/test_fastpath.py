"""The vectorized fast path may decline a region; when it answers, it answers like the oracle."""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import service.parsing
from service.fastpath import MAX_PLAIN_DIGITS, sum_plain_lines
from service.parsing import RegionResult, parse_region
from tests.oracle import expected_of

NEAR_DIGITS = b":;<=>?/.,*\x00\x20\x7a\xb0\xb9\xba\xff"  # bytes a digit test may let through


def checked(region: bytes, max_line_bytes: int = 4096) -> tuple[int, int] | None:
    """The fast path's answer, after checking it against the oracle whenever it gives one."""
    answer = sum_plain_lines(region, max_line_bytes)
    if answer is not None:
        expected = expected_of(region, max_line_bytes=max_line_bytes)
        assert expected.bad_records == 0
        assert expected.lines == expected.records  # an answer claims every line is a record
        assert answer == (expected.records, expected.sum)
    return answer


def per_line(region: bytes, max_line_bytes: int, *, stop_at_bad: bool) -> RegionResult:
    """parse_region with the fast path declining, i.e. the line-by-line path alone."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service.parsing, "sum_plain_lines", lambda region, limit: None)
        return parse_region(region, max_line_bytes, stop_at_bad=stop_at_bad, bad_details=100)


@pytest.mark.parametrize(
    "region",
    [
        pytest.param(b"1\n", id="one"),
        pytest.param(b"123\n-45\n0\n", id="mixed-signs"),
        pytest.param(b"0001\n-0002\n", id="leading-zeros"),
        pytest.param(b"-0\n00\n", id="zeros"),
        pytest.param(b"9" * MAX_PLAIN_DIGITS + b"\n", id="18-digits"),
        pytest.param(b"-" + b"9" * MAX_PLAIN_DIGITS + b"\n", id="negative-18-digits"),
        pytest.param(b"5\n" + b"1" * MAX_PLAIN_DIGITS + b"\n-7\n", id="mixed-lengths"),
    ],
)
def test_plain_regions_take_the_fast_path(region: bytes) -> None:
    """Plain lines are answered by the fast path, so a path that always declines is caught."""
    assert checked(region) is not None


@pytest.mark.parametrize(
    ("region", "max_line_bytes"),
    [
        pytest.param(b"9" * 19 + b"\n", 4096, id="19-digits"),
        pytest.param(b"-" + b"9" * 19 + b"\n", 4096, id="negative-19-digits"),
        pytest.param(b"9223372036854775807\n", 4096, id="int64-max"),
        pytest.param(b"9223372036854775808\n", 4096, id="int64-max-plus-one"),
        pytest.param(b"-9223372036854775808\n", 4096, id="int64-min"),
        pytest.param(b"-9223372036854775809\n", 4096, id="int64-min-minus-one"),
        pytest.param(b"18446744073709551616\n-1\n", 4096, id="two-to-the-64"),
        pytest.param(b"0" * 30 + b"1\n", 4096, id="many-leading-zeros"),
        pytest.param(b"-\n", 4096, id="minus-alone"),
        pytest.param(b"--5\n", 4096, id="double-minus"),
        pytest.param(b"+5\n", 4096, id="plus"),
        pytest.param(b"5-\n", 4096, id="trailing-minus"),
        pytest.param(b"1-2\n", 4096, id="inner-minus"),
        pytest.param(b"-5-\n", 4096, id="minus-both-ends"),
        pytest.param(b"1\n-\n2\n", 4096, id="minus-alone-between"),
        pytest.param(b"-1\n-\n-2\n", 4096, id="minus-alone-between-negatives"),
        pytest.param(b"\n", 4096, id="blank"),
        pytest.param(b"1\n\n2\n", 4096, id="blank-between"),
        pytest.param(b"1\n2", 4096, id="no-final-newline"),
        pytest.param(b"", 4096, id="empty"),
        pytest.param(b"1\r\n", 4096, id="crlf"),
        pytest.param(b" 1\n", 4096, id="space-before"),
        pytest.param(b"1\t\n", 4096, id="tab-after"),
        pytest.param(b"1\x002\n", 4096, id="nul"),
        pytest.param(b"/\n", 4096, id="byte-below-zero"),
        pytest.param(b":\n", 4096, id="byte-above-nine"),
        pytest.param(b"\xff\n", 4096, id="byte-ff"),
        pytest.param("\u0663\n".encode(), 4096, id="arabic-indic"),
        pytest.param(b"12345\n", 4, id="longer-than-limit"),
        pytest.param(b"-1234\n", 4, id="sign-makes-it-too-long"),
        pytest.param(b"1234\n", 4, id="exactly-the-limit"),
    ],
)
def test_adversarial_regions(region: bytes, max_line_bytes: int) -> None:
    """On edge cases the fast path either declines or gives exactly the oracle's answer."""
    checked(region, max_line_bytes)
    whole = region if region.endswith(b"\n") else region + b"\n"
    fast = parse_region(whole, max_line_bytes, stop_at_bad=False, bad_details=100)
    assert fast == per_line(whole, max_line_bytes, stop_at_bad=False)


@pytest.mark.parametrize("byte", list(NEAR_DIGITS), ids=hex)
@pytest.mark.parametrize("sign", [b"", b"-"])
def test_a_non_digit_anywhere_in_a_long_line(byte: int, sign: bytes) -> None:
    """One non-digit at any place of an 18-digit line, among plain lines, is never summed."""
    plain = [b"%d" % (n * 123456789012345) for n in range(60)]
    for place in range(MAX_PLAIN_DIGITS):
        odd = bytearray(b"123456789012345678")
        odd[place] = byte
        for index in (0, 29, 59):
            lines = [*plain[:index], sign + bytes(odd), *plain[index:]]
            region = b"\n".join(lines) + b"\n"
            checked(region)


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([b"9" * MAX_PLAIN_DIGITS] * 50_000, id="sum-past-int64"),
        pytest.param([b"-" + b"9" * MAX_PLAIN_DIGITS] * 50_000, id="negative-sum-past-int64"),
        pytest.param(
            [b"-999999999999999999", b"999999999999999998"] * 25_000, id="alternating-signs"
        ),
    ],
)
def test_sums_past_int64_stay_exact(lines: list[bytes]) -> None:
    """Many 18-digit lines add up exactly, far beyond what an int64 holds."""
    region = b"\n".join(lines) + b"\n"
    assert checked(region) == (len(lines), sum(int(line) for line in lines))


@functools.cache
def big_plain_lines(seed: int) -> tuple[bytes, ...]:
    """About 700 KB of plain lines of every length, both signs: several blocks' worth."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    size = 0
    while size < 700_000:
        digits = rng.randint(1, MAX_PLAIN_DIGITS)
        magnitude = rng.randint(10 ** (digits - 1), 10**digits - 1)
        lines.append(b"%d" % (rng.choice([-1, 1]) * magnitude))
        size += len(lines[-1]) + 1
    return tuple(lines)


@pytest.mark.parametrize("odd", [None, b"1:2345678", b"-", b"--5", b"+5", b"5 ", b"", b"9" * 19])
@pytest.mark.parametrize("near", [0, 1 << 18, (1 << 18) + 7, 1 << 19, -1], ids=hex)
def test_odd_line_near_a_block_boundary(odd: bytes | None, near: int) -> None:
    """A big region with one odd line wherever its blocks meet is declined or exact."""
    lines = list(big_plain_lines(near & 0xFFFF))
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    index = len(lines) - 1 if near < 0 else next(i for i, at in enumerate(starts) if at >= near)
    if odd is not None:
        lines[index] = odd
    region = b"\n".join(lines) + b"\n"
    answer = checked(region)
    if odd is None:
        assert answer is not None


# --- differential: random regions ---------------------------------------------------------------

PLAIN_LINES = st.builds(
    lambda zeros, n: (b"-" if n < 0 else b"") + b"0" * zeros + str(abs(n)).encode(),
    st.integers(min_value=0, max_value=3),
    st.one_of(
        st.integers(min_value=-(10**18), max_value=10**18),
        st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2),
        st.integers(min_value=2**63 - 2, max_value=2**63 + 2),
        st.integers(min_value=-9, max_value=9),
    ),
)
SHORT_LINES = st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1).map(b"%d".__mod__)
ODD_LINES = st.one_of(
    st.sampled_from([b"-", b"--5", b"+5", b"", b" 5", b"5\r", b"-0", b"9" * 19, b"1-2", b"5-"]),
    st.lists(st.sampled_from(list(b"0123456789" * 3 + b"-+\r\t" + NEAR_DIGITS)), max_size=21).map(
        bytes
    ),
)


@st.composite
def regions(draw: st.DrawFn) -> bytes:
    """Mostly plain lines (so the fast path answers), sometimes an odd line, or no final '\\n'."""
    kinds = st.sampled_from([SHORT_LINES, PLAIN_LINES])
    lines = draw(st.lists(draw(kinds), min_size=1, max_size=40))
    if draw(st.integers(0, 2)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(ODD_LINES))
    end = draw(st.sampled_from([b"\n"] * 7 + [b""]))
    return b"\n".join(lines) + end


LIMITS = st.one_of(st.just(4096), st.just(MAX_PLAIN_DIGITS + 1), st.integers(1, 24))


@settings(max_examples=500, deadline=None)
@given(region=regions(), max_line_bytes=LIMITS)
def test_fast_path_matches_oracle(region: bytes, max_line_bytes: int) -> None:
    """On random regions the fast path declines or gives exactly the oracle's answer."""
    checked(region, max_line_bytes)


@settings(max_examples=150, deadline=None)
@given(region=regions(), max_line_bytes=LIMITS, stop_at_bad=st.booleans())
def test_parse_region_is_the_same_with_or_without_the_fast_path(
    region: bytes, max_line_bytes: int, stop_at_bad: bool
) -> None:
    """parse_region of a region big enough for the fast path equals the line-by-line result."""
    if not region.endswith(b"\n"):
        region += b"\n"
    region *= 4096 // len(region) + 1
    assert len(region) >= 4096
    fast = parse_region(region, max_line_bytes, stop_at_bad=stop_at_bad, bad_details=100)
    assert fast == per_line(region, max_line_bytes, stop_at_bad=stop_at_bad)


def test_parse_region_uses_the_fast_path_for_plain_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A big plain region reaches the fast path, which answers it, with the per-line result."""
    rng = random.Random(7)
    region = b"".join(b"%d\n" % rng.randint(-(10**18) + 1, 10**18 - 1) for _ in range(20_000))
    answers: list[tuple[int, int] | None] = []

    def spy(data: bytes, max_line_bytes: int) -> tuple[int, int] | None:
        answers.append(sum_plain_lines(data, max_line_bytes))
        return answers[-1]

    monkeypatch.setattr(service.parsing, "sum_plain_lines", spy)
    fast = parse_region(region, 4096, stop_at_bad=False, bad_details=100)
    assert answers == [(20_000, fast.sum)]
    assert fast == per_line(region, 4096, stop_at_bad=False)
    assert fast.sum == expected_of(region).sum
