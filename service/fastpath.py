"""The vectorized path: count and sum a region of plain lines at memory speed, or decline.

Rule 1: a region is plain when every line is an optional '-' then 1 to 18 ASCII digits, then
        '\\n', and no longer than the line limit. Every such line is a record by the contract, and
        its value fits in int64.
Rule 2: anything else returns None, and the caller takes the exact line-by-line path. This path
        may decline a region; it never answers differently (tests/test_fastpath.py holds it to it).
Rule 3: the sum is exact at any size: the 8 bytes before each '\\n' are read as one 64-bit
        word (and the 8 before those for a longer line), the bytes that are not its digits masked
        to zero, and the words are added in groups small enough that no byte lane can carry
        (28 x 9 < 256); the lanes, and a longer line's words, are combined with Python integers.
Rule 4: every byte is checked: each line's digits in its words, its '\\n' where it was found, its
        sign at its start. A region is parsed in blocks, so numpy's temporaries stay small.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_PLAIN_DIGITS", "sum_plain_lines"]

MAX_PLAIN_DIGITS = 18
_NEWLINE = 10
_MINUS = 45
_WORD = 8  # bytes per word: one little-endian uint64
_BEFORE = 24  # bytes a block's window holds before the block, for 18 digits and a sign
_BLOCK = 256 * 1024  # bytes parsed at once: temporaries of a few MB, warm in the CPU cache
_LANES_WITHOUT_CARRY = 28  # words whose byte lanes (each at most 9) add up to at most 252

_ASCII_ZEROS = np.uint64(0x3030303030303030)
_ABOVE_NINE = np.uint64(0x7676767676767676)  # a lane > 9 plus this has its high bit set
_HIGH_BITS = np.uint64(0x8080808080808080)
# _KEEP[n]: the last n bytes of a word read at its line's end (the top n lanes, little-endian).
_KEEP = np.array(
    [((1 << (8 * n)) - 1) << (8 * (_WORD - n)) for n in range(_WORD + 1)], dtype=np.uint64
)
_LANE_PLACES = [10 ** (_WORD - 1 - lane) for lane in range(_WORD)]

_UInt64s = npt.NDArray[np.uint64]
_Ints = npt.NDArray[np.intp]


def _lane_value(lanes: bytes | npt.NDArray[np.uint64]) -> int:
    """The number whose digits, first to last, add up to `lanes` (a word's byte lanes)."""
    return sum(int(lane) * place for lane, place in zip(lanes, _LANE_PLACES, strict=True))


def _digits_value(words: _UInt64s, digits: _Ints) -> int | None:
    """The sum of the numbers in the last `digits` bytes of each word, or None if not digits.

    Works in place: `words` is scratch afterwards.
    """
    lanes = words
    lanes ^= _ASCII_ZEROS  # a digit becomes 0..9
    lanes &= _KEEP[digits]  # the bytes before the number become 0
    check = lanes + _ABOVE_NINE
    check |= lanes
    if np.bitwise_or.reduce(check) & _HIGH_BITS:
        return None
    del check
    whole = len(lanes) - len(lanes) % _LANES_WITHOUT_CARRY
    groups = lanes[:whole].reshape(-1, _LANES_WITHOUT_CARRY).sum(axis=1, dtype=np.uint64)
    total = _lane_value(groups.view(np.uint8).reshape(-1, _WORD).sum(axis=0, dtype=np.uint64))
    rest = int(lanes[whole:].sum(dtype=np.uint64))
    return total + _lane_value(rest.to_bytes(_WORD, "little"))


def _signed_sum(
    words_at: _UInt64s,
    ends: _Ints,
    digits: _Ints,
    longest: int,
    negative: npt.NDArray[np.bool_] | None,
) -> int | None:
    """The sum of the lines whose last `digits` bytes before `ends` are digits, else None."""
    total = 0
    for word in range(-(-longest // _WORD)):
        counts = digits if longest <= _WORD else np.clip(digits - _WORD * word, 0, _WORD)
        words = words_at[ends - _WORD * (word + 1)]
        if negative is None:
            value = _digits_value(words, counts)
        else:
            positive = _digits_value(words[~negative], counts[~negative])
            subtracted = _digits_value(words[negative], counts[negative])
            value = None if positive is None or subtracted is None else positive - subtracted
        if value is None:
            return None
        total += value * 10 ** (_WORD * word)
    return total


def _sum_block(window: npt.NDArray[np.uint8], longest: int, signed: bool) -> tuple[int, int] | None:
    """(records, sum) of the whole lines in `window[_BEFORE:]`; the bytes before are ignored.

    `signed`: some line may open with a '-'; else none does, and a '-' fails the digit check.
    """
    ends = np.flatnonzero(window[_BEFORE:] == _NEWLINE)
    lengths = np.empty_like(ends)
    lengths[0] = ends[0]
    np.subtract(ends[1:], ends[:-1], out=lengths[1:])
    lengths[1:] -= 1
    ends += _BEFORE
    shortest, longest_line = int(lengths.min()), int(lengths.max())
    if shortest < 1 or longest_line > longest:
        return None
    digits, negative = lengths, None
    if signed:  # a '-' opening its line is set aside; every other byte must be a digit
        opening = window[ends - lengths] == _MINUS
        if opening.any():
            digits, negative = lengths - opening, opening
            shortest, longest_line = int(digits.min()), int(digits.max())
    if shortest < 1 or longest_line > MAX_PLAIN_DIGITS:
        return None
    # Every position of the window, read as the little-endian word that starts there.
    words_at: _UInt64s = np.ndarray(
        (len(window) - _WORD + 1,), dtype="<u8", buffer=window, strides=(1,)
    )
    total = _signed_sum(words_at, ends, digits, longest_line, negative)
    return None if total is None else (len(ends), total)


def sum_plain_lines(region: bytes, max_line_bytes: int) -> tuple[int, int] | None:
    """(records, sum) of a region of complete plain lines, or None if any line is not plain."""
    if not region or region[-1] != _NEWLINE:
        return None
    chars = np.frombuffer(region, dtype=np.uint8)
    longest_plain = min(max_line_bytes, MAX_PLAIN_DIGITS + 1)
    signed = b"-" in region
    records = total = 0
    start = 0
    while start < len(region):
        stop = region.rfind(b"\n", start, start + _BLOCK) + 1
        if stop <= start:
            return None  # no line ends within a block: far too long to be plain
        if start >= _BEFORE:
            window = chars[start - _BEFORE : stop]
        else:  # too few bytes before the block: it gets a padded copy
            window = np.empty(_BEFORE + stop - start, dtype=np.uint8)
            window[:_BEFORE] = _NEWLINE
            window[_BEFORE:] = chars[start:stop]
        block = _sum_block(window, longest_plain, signed)
        if block is None:
            return None
        records += block[0]
        total += block[1]
        start = stop
    return records, total
