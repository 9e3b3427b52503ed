"""The vectorized path: count and sum a region of plain lines at memory speed, or decline.

Rule 1: a region is plain when every line is an optional '-' then 1 to 18 ASCII digits, then
        '\\n', and no longer than the line limit. Every such line is a record by the contract, and
        its value fits in int64.
Rule 2: anything else returns None, and the caller takes the exact line-by-line path. This path
        may decline a region; it never answers differently (tests/test_fastpath.py holds it to it).
Rule 3: the sum is exact at any size: digits are summed per decimal place (at most 9 x lines per
        place, far inside int64) and the places are combined with Python integers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_PLAIN_DIGITS", "sum_plain_lines"]

MAX_PLAIN_DIGITS = 18
_NEWLINE = 10
_MINUS = 45
_ZERO = 48


def sum_plain_lines(region: bytes, max_line_bytes: int) -> tuple[int, int] | None:
    """(records, sum) of a region of complete plain lines, or None if any line is not plain."""
    if not region or region[-1] != _NEWLINE:
        return None
    chars = np.frombuffer(region, dtype=np.uint8)
    digits = chars - np.uint8(_ZERO)  # non-digits wrap around to values above 9
    newlines = np.flatnonzero(chars == _NEWLINE)
    starts = np.empty_like(newlines)
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    lengths = newlines - starts
    if int(lengths.min()) < 1 or int(lengths.max()) > max_line_bytes:
        return None  # a blank or over-long line: the exact path decides

    negative: np.ndarray | None = None
    signs = int(np.count_nonzero(digits > 9)) - len(newlines)
    if signs:
        negative = chars[starts] == _MINUS
        if (
            int(np.count_nonzero(negative)) != signs
            or int(np.count_nonzero(chars == _MINUS)) != signs
        ):
            return None  # some other byte, or a '-' that does not open its line
        lengths = lengths - negative
        if int(lengths.min()) < 1:
            return None
    longest = int(lengths.max())
    if longest > MAX_PLAIN_DIGITS:
        return None

    shortest = int(lengths.min())
    total = 0
    for place in range(longest):
        at_place = digits[newlines - 1 - place]
        if place >= shortest:  # lines shorter than this place contribute nothing to it
            at_place = np.where(lengths > place, at_place, np.uint8(0))
        if negative is None:
            place_sum = int(at_place.sum(dtype=np.int64))
        else:
            place_sum = int(at_place[~negative].sum(dtype=np.int64)) - int(
                at_place[negative].sum(dtype=np.int64)
            )
        total += place_sum * 10**place
    return len(newlines), total
