"""Exact conversion between integers and decimal text at any length, in subquadratic time.

CPython refuses int()/str() of digit strings past a limit (4300 digits by default) to bound the
cost of hostile input: both are quadratic in the number of digits (a 2 MB number costs minutes).
A line is bounded by `max_line_bytes` (up to 1 GiB), so long values are converted by divide and
conquer instead, as CPython 3.12's `_pylong` does:
- text to int: split the digits in two, convert each half, join them with one multiplication
  by a power of ten (Karatsuba: about n**1.58);
- int to text: split the bits in two (a shift, linear), convert each half to a `decimal.Decimal`
  and join them with one multiplication by a power of two in decimal (libmpdec's
  number-theoretic transform: about n log n); a Decimal's text is then linear to write.
Pieces of at most `_DIGITS_AT_ONCE` digits go through int()/str(), under the limit. Past
`_THROUGH_DECIMAL` digits, text to int goes through a `Decimal` instead (linear to read), split
by powers of two, each quotient found by a multiplication with a reciprocal kept for each power
(about n log^2 n): faster there, and a thread converting a 10-million-digit line lets the event
loop turn between its operations (the largest, at the top, take about a second there; at 50
million digits over ten). A conversion in a thread whose result is no longer wanted stops at
its next step (`abandon_when`).
`exact_json` writes JSON whose integers may be of any length (a checkpoint, a log line) this way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Imported only where a value is too long for int() and str(): most runs have none, and
    # importing it is not free at start-up.
    import decimal

__all__ = ["Abandoned", "abandon_when", "decimal_of", "exact_json", "int_of"]

_DIGITS_AT_ONCE = 3000
_BITS_AT_ONCE = 3 * _DIGITS_AT_ONCE  # 3 bits per digit: a safe underestimate
_THROUGH_DECIMAL = 2_000_000  # digits: past this, text to int goes through a Decimal
_BITS_PER_DIGIT = 3.3219280948873626  # log2(10)
_GUARD_DIGITS = 8  # beyond what a quotient needs, so it falls short by 1 at most


@cache
def _exact() -> decimal.Context:
    """Exact decimal arithmetic at any size: no rounding, no exponent limit."""
    import decimal

    return decimal.Context(
        prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.Inexact]
    )


class Abandoned(Exception):
    """A conversion given up at one of its steps: its caller no longer wants the value."""


_abandon = threading.local()  # .event: the Event that gives up this thread's conversions


@contextmanager
def abandon_when(event: threading.Event) -> Iterator[None]:
    """In this thread, a long conversion raises `Abandoned` at its next step once `event` is
    set: a thread whose result nobody waits for lets go of the interpreter within one step."""
    _abandon.event = event
    try:
        yield
    finally:
        _abandon.event = None


def _go_on() -> None:
    event = getattr(_abandon, "event", None)
    if event is not None and event.is_set():
        raise Abandoned


def _power_of_ten(exponent: int) -> int:
    power: int = 10**exponent
    return power


def _power_of_two(exponent: int) -> decimal.Decimal:
    return _exact().power(2, exponent)


def int_of(text: bytes | str) -> int:
    """int() of an optionally signed ASCII digit string of any length."""
    if len(text) <= _DIGITS_AT_ONCE:
        return int(text)
    sign = -1 if text[:1] in (b"-", "-") else 1
    body = text[1:] if text[:1] in (b"-", b"+", "-", "+") else text
    if len(body) > _THROUGH_DECIMAL:
        return sign * _int_through_decimal(body if isinstance(body, str) else body.decode())
    # Each level's halves share their powers; the cache goes with the call, so a power as large
    # as half a 1 GiB number is not kept for the next one.
    ten_to = cache(_power_of_ten)

    def convert(digits: bytes | str) -> int:
        if len(digits) <= _DIGITS_AT_ONCE:
            return int(digits)
        _go_on()
        low = len(digits) // 2
        return convert(digits[:-low]) * ten_to(low) + convert(digits[-low:])

    return sign * convert(body)


def _int_through_decimal(digits: str) -> int:
    """int() of a long digit string: the Decimal split by powers of two, high part first."""
    import decimal

    exact = _exact()
    chop = decimal.Context(
        prec=decimal.MAX_PREC,
        Emax=decimal.MAX_EMAX,
        Emin=decimal.MIN_EMIN,
        rounding=decimal.ROUND_DOWN,
    )

    @cache
    def power_and_reciprocal(bits: int) -> tuple[decimal.Decimal, decimal.Decimal]:
        _go_on()
        power = _power_of_two(bits)
        _go_on()
        chop.prec = power.adjusted() + _GUARD_DIGITS + 2
        return power, chop.divide(1, power)

    def convert(value: decimal.Decimal, bits: int) -> int:  # 0 <= value < 2**bits
        if bits <= _BITS_AT_ONCE:
            return int(value)
        _go_on()
        low = bits // 2
        power, reciprocal = power_and_reciprocal(low)
        _go_on()
        # Every step rounds down, so `high` is at most the quotient, and short of it by a
        # little (the guard digits): the remainder is mended by a subtraction or two.
        chop.prec = max(value.adjusted() - power.adjusted(), 0) + _GUARD_DIGITS
        high = chop.multiply(chop.plus(value), chop.plus(reciprocal))
        high = high.to_integral_value(rounding=decimal.ROUND_DOWN)
        _go_on()
        rest = exact.subtract(value, exact.multiply(high, power))
        while rest >= power:
            rest = exact.subtract(rest, power)
            high = exact.add(high, 1)
        return (convert(high, bits - low) << low) | convert(rest, low)

    return convert(exact.create_decimal(digits), int(len(digits) * _BITS_PER_DIGIT) + 2)


# The last long value written, and its text: one sum is written many times (the checkpoint, the
# result, `checkpoint_saved`, `completed`, `worker_stopped`) and compared in linear time.
_last_written: tuple[int, str] = (0, "0")


def decimal_of(value: int) -> str:
    """str() of an integer of any size."""
    global _last_written
    if value.bit_length() <= _BITS_AT_ONCE:
        return str(value)
    last_value, last_text = _last_written
    if value == last_value:
        return last_text
    import decimal

    exact = _exact()
    sign, value = ("-", -value) if value < 0 else ("", value)
    two_to = cache(_power_of_two)  # per call, as in int_of

    def convert(part: int, bits: int) -> decimal.Decimal:
        if bits <= _BITS_AT_ONCE:
            return decimal.Decimal(part)
        low = bits // 2
        high = part >> low
        joined = exact.multiply(convert(high, bits - low), two_to(low))
        return exact.add(joined, convert(part - (high << low), low))

    text = sign + str(convert(value, value.bit_length()))
    _last_written = (-value if sign else value, text)
    return text


def exact_json(document: Any, **dumps: Any) -> str:
    """json.dumps(document, **dumps) for integers (at any depth) of any length."""
    long_ints: dict[str, int] = {}

    def shield(value: Any) -> Any:
        if type(value) is int and value.bit_length() > 64:
            token = f"\0{len(long_ints)}\0"
            long_ints[token] = value
            return token
        if isinstance(value, dict):
            return {k: shield(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [shield(v) for v in value]
        return value

    text = json.dumps(shield(document), **dumps)
    for token, value in long_ints.items():
        text = text.replace(json.dumps(token), decimal_of(value))
    return text
