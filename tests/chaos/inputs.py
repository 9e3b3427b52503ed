"""The campaign's inputs: noisy lines that exercise every input rule, and what the oracle says
of any prefix of them.

`prefix_oracle(data)` answers "what must a checkpoint at this offset hold?" for an input small
enough to hand to the oracle whole; `RepeatedInput` answers it for one too big for that;
`Appender` grows a followed input in random cuts, numbers split across writes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.chaos.workers import MAX_LINE
from tests.oracle import Expected, expected_of

__all__ = [
    "BAD_LINES",
    "BLANK_LINES",
    "Appender",
    "Oracle",
    "RepeatedInput",
    "noisy_block",
    "noisy_input",
    "noisy_lines",
    "prefix_oracle",
]

Oracle = Callable[[int], Expected | None]

BAD_LINES: tuple[bytes, ...] = (
    b"1_000",
    b"1.5",
    b"1e3",
    b"0x1F",
    "\u0661\u0662".encode(),  # Arabic-Indic digits
    "\uff11\uff12".encode(),  # fullwidth digits
    b"abc",
    b"\x00",
    b"1\x002",
    b"\xff\xfe",
    b"\xc3\x28",
    b"+-1",
    b"--1",
    b"+",
    b"-",
    b"- 1",
    b"1 2",
    b"\x0b1",
    "\u00a01".encode(),  # a no-break space is not a space or a tab
    b"1\r\r",
    b"\r1",
    b"1,000",
    b"\t+\t",
    b"NaN",
    b"\x1b[31m1",
)
BLANK_LINES: tuple[bytes, ...] = (b"", b" ", b"\t", b"\r", b" \t \r")


def _pad(rng: random.Random) -> bytes:
    return bytes(rng.choice(b" \t") for _ in range(rng.randint(0, 3)))


def noisy_lines(rng: random.Random, count: int, max_line_bytes: int = MAX_LINE) -> Iterator[bytes]:
    """Lines (without '\\n') exercising every input rule; mostly plain numbers."""
    for _ in range(count):
        roll = rng.random()
        if roll < 0.70:
            yield str(rng.randrange(-(10**6), 10**6)).encode()
        elif roll < 0.78:
            sign = rng.choice((b"", b"+", b"-"))
            cr = b"\r" if rng.random() < 0.5 else b""
            yield _pad(rng) + sign + str(rng.randrange(10**9)).encode() + _pad(rng) + cr
        elif roll < 0.83:
            yield str(rng.randrange(-(10**6), 10**6)).encode() + b"\r"
        elif roll < 0.87:
            yield rng.choice(BLANK_LINES)
        elif roll < 0.93:
            yield rng.choice(BAD_LINES)
        elif roll < 0.96:
            yield b"7" * rng.randint(max_line_bytes + 1, max_line_bytes * 40)
        elif roll < 0.98:
            digits = str(rng.randint(10**99, 10**100 - 1)).encode()
            yield rng.choice((b"", b"-", b"+")) + digits
        else:  # the limit exactly, and one over it because the '\r' counts
            at_limit = b"9" * max_line_bytes
            yield at_limit if rng.random() < 0.5 else at_limit + b"\r"


def noisy_input(rng: random.Random, count: int, *, final_newline: bool | None = None) -> bytes:
    body = b"\n".join(noisy_lines(rng, count))
    if final_newline is None:
        final_newline = rng.random() < 0.5
    return body + (b"\n" if final_newline else b"")


def prefix_oracle(
    data: bytes, *, following: bool = False, max_line_bytes: int = MAX_LINE
) -> Oracle:
    """What a checkpoint at `offset` must hold for `data`; None if no line boundary is there."""

    def at(offset: int) -> Expected | None:
        if offset < 0 or offset > len(data):
            return None
        at_line_start = offset == 0 or data[offset - 1 : offset] == b"\n"
        if not at_line_start and (following or offset != len(data)):
            return None
        return expected_of(data[:offset], max_line_bytes=max_line_bytes)

    return at


@dataclass(frozen=True)
class RepeatedInput:
    """A block of whole lines written `copies` times: an input too big to run the oracle on."""

    block: bytes
    copies: int

    def write(self, path: Path) -> None:
        with path.open("wb") as handle:
            for _ in range(self.copies):
                handle.write(self.block)

    def _scaled(self, whole: int, rest: Expected) -> Expected:
        one = expected_of(self.block)
        return Expected(
            one.lines * whole + rest.lines,
            one.records * whole + rest.records,
            one.bad_records * whole + rest.bad_records,
            one.sum * whole + rest.sum,
            one.offset * whole + rest.offset,
            (),
        )

    def at(self, offset: int) -> Expected | None:
        whole, part = divmod(offset, len(self.block))
        if whole > self.copies or (whole == self.copies and part):
            return None
        if part and self.block[part - 1 : part] != b"\n":
            return None
        return self._scaled(whole, expected_of(self.block[:part]))

    @property
    def expected(self) -> Expected:
        return self._scaled(self.copies, expected_of(b""))


def noisy_block(rng: random.Random, size: int = 1 << 20) -> bytes:
    """About `size` bytes of plain numbers (the fast path) ending in '\\n'."""
    count = size // 8
    return ("\n".join(str(rng.randrange(-(10**6), 10**6)) for _ in range(count)) + "\n").encode()


class Appender:
    """Appends noisy lines to a followed input in random cuts (numbers split across writes)."""

    def __init__(self, path: Path, rng_seed: int) -> None:
        self.path = path
        self._rng = random.Random(rng_seed)
        self._stop = threading.Event()
        path.write_bytes(noisy_input(self._rng, 200))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        with self.path.open("ab") as handle:
            while not self._stop.is_set():
                if len(pending) < 4096:
                    pending += b"\n" + b"\n".join(noisy_lines(self._rng, 200))
                cut = self._rng.randint(1, 400)
                handle.write(pending[:cut])
                handle.flush()
                pending = pending[cut:]
                self._stop.wait(self._rng.uniform(0.002, 0.02))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
