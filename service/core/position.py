"""The running state and the clocks that act on it. Pure: no I/O, no await, time is passed in.

Rule 1: `Position` is the whole state of a run: where the next unread line starts and what the
        lines before it added up to. It is immutable; progress makes a new one.
Rule 2: `Periodic` says when something is due; it compensates for drift by scheduling from the
        start time, never from the moment the previous action finished.
Rule 3: `Pacer` turns a records-per-second limit into delays; it never sleeps itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["Pacer", "Periodic", "Position", "RateMeter", "percent_done"]


@dataclass(frozen=True, slots=True)  # slots: thousands live at once, each one object
class Position:
    """Where the next unread line starts, and what the consumed lines added up to."""

    offset: int = 0
    lines: int = 0
    records: int = 0
    bad_records: int = 0
    sum: int = 0

    def advance(
        self, *, consumed: int, lines: int, records: int, bad_records: int, total: int
    ) -> Position:
        return replace(
            self,
            offset=self.offset + consumed,
            lines=self.lines + lines,
            records=self.records + records,
            bad_records=self.bad_records + bad_records,
            sum=self.sum + total,
        )

    def since(self, earlier: Position) -> Position:
        """What was consumed from `earlier` to here, field by field."""
        return Position(
            self.offset - earlier.offset,
            self.lines - earlier.lines,
            self.records - earlier.records,
            self.bad_records - earlier.bad_records,
            self.sum - earlier.sum,
        )


class Periodic:
    """Due every `interval` seconds on a fixed grid from `start`: a slow action does not drift."""

    def __init__(self, interval: float, start: float) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self._next = start + interval

    @property
    def next_due(self) -> float:
        return self._next

    def due(self, now: float) -> bool:
        """True once per grid slot reached; missed slots are skipped, not replayed."""
        if now < self._next:
            return False
        missed = math.floor((now - self._next) / self.interval)
        self._next += (missed + 1) * self.interval
        return True


class Pacer:
    """A limit of `rate` records per second, as a delay to wait after each batch of records."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at: float | None = None

    def delay_after(self, records: int, now: float) -> float:
        """Seconds to wait after handling `records` so the long-run rate stays at the limit."""
        if self.rate <= 0:
            return 0.0
        start = now if self._free_at is None else max(self._free_at, now)
        self._free_at = start + records / self.rate
        return max(0.0, self._free_at - now)


class RateMeter:
    """Records per second between two readings."""

    def __init__(self, records: int, now: float) -> None:
        self._records = records
        self._time = now

    def rate(self, records: int, now: float) -> float:
        elapsed = now - self._time
        value = (records - self._records) / elapsed if elapsed > 0 else 0.0
        self._records, self._time = records, now
        return value


def percent_done(offset: int, size: int) -> float:
    """How much of an input of `size` bytes the bytes before `offset` are, in percent; an empty
    input is done. The one formula of the logs, `status` and the progress line."""
    return 100.0 * offset / size if size else 100.0
