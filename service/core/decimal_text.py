"""Exact conversion between integers and decimal text at any length.

CPython refuses int()/str() of digit strings past a limit (4300 digits by default) to bound the
cost of hostile input. A line is already bounded by `max_line_bytes` and a sum grows only with
the log of the records, so here long values are converted in pieces under the limit instead.
"""

from __future__ import annotations

__all__ = ["decimal_of", "int_of"]

_DIGITS_AT_ONCE = 4000


def int_of(text: bytes | str) -> int:
    """int() of an optionally signed ASCII digit string of any length."""
    if len(text) <= _DIGITS_AT_ONCE:
        return int(text)
    sign = -1 if text[:1] in (b"-", "-") else 1
    body = text[1:] if text[:1] in (b"-", b"+", "-", "+") else text
    value = 0
    for start in range(0, len(body), _DIGITS_AT_ONCE):
        piece = body[start : start + _DIGITS_AT_ONCE]
        value = value * 10 ** len(piece) + int(piece)
    return sign * value


def decimal_of(value: int) -> str:
    """str() of an integer of any size."""
    sign, value = ("-", -value) if value < 0 else ("", value)
    pieces = []
    while value.bit_length() > 3 * _DIGITS_AT_ONCE:  # 3 bits per digit: a safe underestimate
        value, low = divmod(value, 10**_DIGITS_AT_ONCE)
        pieces.append(str(low).zfill(_DIGITS_AT_ONCE))
    return sign + str(value) + "".join(reversed(pieces))
