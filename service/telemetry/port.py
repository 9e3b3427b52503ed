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

import threading
from typing import TYPE_CHECKING

from service.telemetry.logs import Logger

if TYPE_CHECKING:
    from service.lifecycle.partition import Gauge, Standing

__all__ = ["GaugeBoard", "Telemetry"]


class Telemetry:
    """The reports of a running worker; this form ignores them all."""

    def open(self, log: Logger) -> None:
        """Start serving (after the lock is held); raise a WorkerError if that is impossible."""

    def ready(self) -> None:
        """Start-up finished and the input is open."""

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        """One batch was consumed: `records` valid, `bad_records` skipped, `nbytes` bytes."""

    def reachable(self, yes: bool, why: str = "the input cannot be reached") -> None:
        """The input can (again) or cannot be reached now (a broker outage, no file matching
        yet): not ready while it cannot, `why` saying so."""

    def partition_gauges(self, partition: object, gauges: list[Gauge]) -> None:
        """Where the streams of the lifecycle `partition` stand now (its whole list, each gauge
        labelled as it is called now)."""

    def partition_gone(self, partition: object) -> None:
        """The lifecycle `partition` vanished (deleted, revoked): forget it."""

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
    another thread (a scrape, a redraw): each report replaces that partition's list. A partition
    is known by itself, not by its label: a rotated file's path changes, and its series with it."""

    def __init__(self) -> None:
        self._by_partition: dict[object, list[Gauge]] = {}
        self._lock = threading.Lock()

    def report(self, partition: object, gauges: list[Gauge]) -> None:
        with self._lock:
            self._by_partition[partition] = gauges

    def forget(self, partition: object) -> None:
        with self._lock:
            self._by_partition.pop(partition, None)

    def all(self) -> list[Gauge]:
        with self._lock:
            return [gauge for listed in self._by_partition.values() for gauge in listed]
