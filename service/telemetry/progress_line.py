"""The live progress line of `run` on a terminal: percent, rate, ETA, sum so far, partitions.

Rule 1: it is shown only when stderr is a terminal and the logs are for a person (console);
        JSON logs and output that is not a terminal are left exactly as they are.
Rule 2: what it says is computed by `describe`, a pure function of the partitions' positions and
        the rates, tested without a terminal; rich only draws it, from its own refresh thread.
Rule 3: while it shows on the terminal the logs go to, log lines go through its console, so they
        print above it; `close` takes it off the screen and gives the logs their stream back.
        The cursor stays visible throughout: an exit that skips `close` (a second Ctrl+C) leaves
        at worst one stale line, never a terminal without a cursor.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO, cast

from rich.console import Console, RenderableType
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from service.core.decimal_text import decimal_of
from service.core.position import percent_done
from service.telemetry.logs import Logger, route_output
from service.telemetry.port import GaugeBoard, Telemetry

if TYPE_CHECKING:
    from service.lifecycle.partition import Gauge

__all__ = ["ProgressDisplay", "ProgressLine", "RateWindow", "describe"]

RATE_WINDOW = 5.0  # seconds the rate is averaged over
REFRESHES_PER_SECOND = 4


class RateWindow:
    """Records and bytes per second over the last `RATE_WINDOW` seconds; time is passed in."""

    def __init__(self, now: float) -> None:
        self._records = 0
        self._bytes = 0
        self._samples: deque[tuple[float, int, int]] = deque([(now, 0, 0)])

    def add(self, records: int, nbytes: int, now: float) -> None:
        self._records += records
        self._bytes += nbytes
        self._samples.append((now, self._records, self._bytes))

    def rates(self, now: float) -> tuple[float, float]:
        """(records per second, bytes per second); both fall to 0 when nothing comes."""
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        start, records, nbytes = samples[0]
        if len(samples) == 1 and start <= now - RATE_WINDOW:
            return 0.0, 0.0
        elapsed = max(now - start, 1e-9)
        return (self._records - records) / elapsed, (self._bytes - nbytes) / elapsed


@dataclass(frozen=True)
class ProgressLine:
    """What the progress line says."""

    percent: float | None  # None: no partition known yet (start-up, a glob matching nothing)
    rate: float  # records per second
    eta: float | None  # seconds to the end of the input as it is now; None: unknown or done
    sum: int
    reading: int  # partitions with input left to read
    caught_up: int  # partitions at the end of their input

    def text(self) -> str:
        eta = "--:--" if self.eta is None else _clock(self.eta)
        percent = "   --" if self.percent is None else f"{self.percent:5.1f}"
        return (
            f"{percent}%  {self.rate:,.0f} records/s  ETA {eta}  "
            f"sum {decimal_of(self.sum)}  "
            f"partitions: {self.reading} reading, {self.caught_up} caught up"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def describe(gauges: list[Gauge], records_rate: float, bytes_rate: float) -> ProgressLine:
    """The progress line of the streams being read (files, or Kafka partitions) at these rates.

    `bytes_rate` is in the unit of the positions: bytes for files, messages for Kafka.
    """
    offset = sum(gauge.position.offset for gauge in gauges)
    end = sum(max(gauge.end, gauge.position.offset) for gauge in gauges)
    left = end - offset
    caught_up = sum(1 for gauge in gauges if gauge.position.offset >= gauge.end)
    return ProgressLine(
        percent=percent_done(offset, end) if gauges else None,
        rate=records_rate,
        eta=left / bytes_rate if left > 0 and bytes_rate > 0 else None,
        sum=sum(gauge.position.sum for gauge in gauges),
        reading=len(gauges) - caught_up,
        caught_up=caught_up,
    )


class ProgressDisplay(Telemetry):
    """The progress line on stderr, redrawn a few times a second while the worker runs."""

    def __init__(self, *, same_terminal: bool, console: Console | None = None) -> None:
        self._console = console or Console(file=sys.stderr)
        self._same_terminal = same_terminal
        self._lock = threading.Lock()  # the refresh thread reads what the event loop writes
        self._gauges = GaugeBoard()
        self._rates = RateWindow(time.monotonic())
        self._live: Live | None = None

    def open(self, log: Logger) -> None:
        self._live = Live(
            _Renderable(self),
            console=self._console,
            refresh_per_second=REFRESHES_PER_SECOND,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()
        self._console.show_cursor(True)
        if self._same_terminal:
            route_output(cast(TextIO, FileProxy(self._console, sys.stdout)))

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        with self._lock:
            self._rates.add(records, nbytes, time.monotonic())

    def partition_gauges(self, partition: object, gauges: list[Gauge]) -> None:
        self._gauges.report(partition, gauges)

    def partition_gone(self, partition: object) -> None:
        self._gauges.forget(partition)

    def close(self) -> None:
        if self._live is None:
            return
        live, self._live = self._live, None
        # The terminal may be gone (a closed window, an ssh drop): no line left to take off.
        with contextlib.suppress(OSError):
            live.stop()
        if self._same_terminal:
            route_output(sys.stdout)

    def line(self) -> ProgressLine:
        with self._lock:
            records_rate, bytes_rate = self._rates.rates(time.monotonic())
        return describe(self._gauges.all(), records_rate, bytes_rate)


class _Renderable:
    """Asks the display for a fresh line each time rich redraws."""

    def __init__(self, display: ProgressDisplay) -> None:
        self._display = display

    def __rich__(self) -> RenderableType:
        line = self._display.line()
        grid = Table.grid(padding=(0, 1))
        bar = ProgressBar(total=100.0, completed=line.percent or 0.0, width=24)
        grid.add_row(bar, Text(line.text()))
        return grid
