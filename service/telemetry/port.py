"""What the worker reports while it runs, for the metrics endpoint and the progress line.

Rule 1: the worker calls one `Telemetry` at a few plain points of its lifecycle (the methods
        below) and knows nothing of Prometheus, HTTP or terminals.
Rule 2: the base class does nothing: with metrics off and no terminal, the worker holds one, and
        the hot path pays a no-op method call per batch. Nothing heavy is imported for it.
Rule 3: `consumed` takes what one batch added (the counters); `partition_gauges` takes where
        each stream of a lifecycle partition stands (the gauges, the percent): one for a file,
        one per owned Kafka partition. Each report replaces that partition's previous one, so a
        revoked Kafka partition's series goes with the next report.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from service.settings import Settings
from service.telemetry.logs import Logger, renders_json

if TYPE_CHECKING:
    from service.lifecycle.partition import Gauge, Standing

__all__ = ["GaugeBoard", "Telemetry", "telemetry_for"]


class Telemetry:
    """The reports of a running worker; this form ignores them all."""

    def open(self, log: Logger) -> None:
        """Start serving (after the lock is held); raise a WorkerError if that is impossible."""

    def ready(self) -> None:
        """Start-up finished and the input is open."""

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        """One batch was consumed: `records` valid, `bad_records` skipped, `nbytes` bytes."""

    def reachable(self, yes: bool) -> None:
        """The input can (again) or cannot be reached now (a broker outage): not ready while
        it cannot."""

    def partition_gauges(self, label: str, gauges: list[Gauge]) -> None:
        """Where the streams of the partition `label` stand now (its whole list)."""

    def partition_gone(self, label: str) -> None:
        """The partition `label` vanished (deleted, revoked): forget it."""

    def checkpoint_saved(self, reason: str, seconds: float) -> None:
        """A checkpoint was written for `reason`, in `seconds`."""

    def standing(self, standing: Standing) -> None:
        """Where the whole source stands now (each second)."""

    def loop_alive(self) -> None:
        """A beat from the event loop: it turns."""

    def close(self) -> None:
        """Stop serving and take the progress line off the terminal; safe to call twice."""


class GaugeBoard:
    """The latest gauges of each lifecycle partition, written by the event loop and read by
    another thread (a scrape, a redraw): each report replaces that partition's list."""

    def __init__(self) -> None:
        self._by_partition: dict[str, list[Gauge]] = {}
        self._lock = threading.Lock()

    def report(self, label: str, gauges: list[Gauge]) -> None:
        with self._lock:
            self._by_partition[label] = gauges

    def forget(self, label: str) -> None:
        with self._lock:
            self._by_partition.pop(label, None)

    def all(self) -> list[Gauge]:
        with self._lock:
            return [gauge for listed in self._by_partition.values() for gauge in listed]


class _Fanout(Telemetry):
    """Every report to each of several telemetries."""

    def __init__(self, parts: list[Telemetry]) -> None:
        self.parts = parts

    def open(self, log: Logger) -> None:
        for part in self.parts:
            part.open(log)

    def ready(self) -> None:
        for part in self.parts:
            part.ready()

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        for part in self.parts:
            part.consumed(records, bad_records, nbytes)

    def reachable(self, yes: bool) -> None:
        for part in self.parts:
            part.reachable(yes)

    def partition_gauges(self, label: str, gauges: list[Gauge]) -> None:
        for part in self.parts:
            part.partition_gauges(label, gauges)

    def partition_gone(self, label: str) -> None:
        for part in self.parts:
            part.partition_gone(label)

    def checkpoint_saved(self, reason: str, seconds: float) -> None:
        for part in self.parts:
            part.checkpoint_saved(reason, seconds)

    def standing(self, standing: Standing) -> None:
        for part in self.parts:
            part.standing(standing)

    def loop_alive(self) -> None:
        for part in self.parts:
            part.loop_alive()

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _shows_progress(settings: Settings) -> bool:
    """A terminal on stderr, and logs a person reads: never for JSON logs or redirected output."""
    return not renders_json(settings.log_format) and sys.stderr.isatty()


def telemetry_for(settings: Settings) -> Telemetry:
    """The telemetry `settings` ask for: the endpoint, the progress line, both or neither."""
    parts: list[Telemetry] = []
    if settings.metrics_address:
        from service.telemetry.endpoint import MetricsEndpoint

        parts.append(MetricsEndpoint(settings.metrics_address, settings.checkpoint_interval))
    if _shows_progress(settings):
        from service.telemetry.progress_line import ProgressDisplay

        parts.append(ProgressDisplay(same_terminal=_same_terminal()))
    if not parts:
        return Telemetry()
    return parts[0] if len(parts) == 1 else _Fanout(parts)


def _same_terminal() -> bool:
    """Do stdout and stderr reach one terminal (so log lines must print above the progress)?"""
    try:
        return sys.stdout.isatty() and os.path.samestat(
            os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
        )
    except (OSError, ValueError):
        return False
