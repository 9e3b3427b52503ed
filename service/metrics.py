"""What the worker exposes to Prometheus, and the health and readiness the probes answer.

Rule 1: its own `CollectorRegistry`, never the global default one: two workers in one process
        (tests, the library) never share or collide on series.
Rule 2: the counters count what this process consumed since it started, without labels; a
        resumed run starts them at 0. Totals since the very beginning are in the checkpoint.
Rule 3: per-partition gauges carry a `partition` label (a file's path; Kafka's `topic:partition`)
        and a vanished partition's series are removed, not left at their last value.
Rule 4: health is the event loop's heartbeat, read by another thread: a loop that has not beaten
        for `STALLED_AFTER` seconds is stalled, even though the process and this thread live.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .health import STALE_AFTER
from .state import Position
from .telemetry import Telemetry

__all__ = ["SAVE_REASONS", "STALLED_AFTER", "Metrics"]

# The same threshold as `healthcheck`'s stale heartbeat: the loop beats every second.
STALLED_AFTER = STALE_AFTER
SAVE_REASONS = ("timer", "shutdown", "completed")
# A checkpoint write is a temporary file, two fsyncs and a rename: milliseconds on a healthy disk,
# seconds on a stalled one.
_SAVE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics(Telemetry):
    """The worker's Prometheus series, its readiness and its event loop's last heartbeat."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._records = Counter(
            "checkpoint_worker_records", "Valid records consumed by this process", registry=registry
        )
        self._bad_records = Counter(
            "checkpoint_worker_bad_records",
            "Bad records consumed (skipped) by this process",
            registry=registry,
        )
        self._bytes = Counter(
            "checkpoint_worker_bytes_consumed",
            "Bytes of input consumed by this process",
            registry=registry,
        )
        self._saves = Counter(
            "checkpoint_worker_checkpoint_saves",
            "Checkpoints written, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in SAVE_REASONS:
            self._saves.labels(reason)
        self._save_seconds = Histogram(
            "checkpoint_worker_checkpoint_save_duration_seconds",
            "Time to write one checkpoint atomically and durably",
            buckets=_SAVE_BUCKETS,
            registry=registry,
        )
        self._last_save = Gauge(
            "checkpoint_worker_last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint written (0: none yet)",
            registry=registry,
        )
        self._position = Gauge(
            "checkpoint_worker_position",
            "Where the next unread record of the partition starts (a file: its byte offset)",
            ["partition"],
            registry=registry,
        )
        self._lag_bytes = Gauge(
            "checkpoint_worker_lag_bytes",
            "Bytes of the partition's file not consumed yet (size minus position)",
            ["partition"],
            registry=registry,
        )
        self._partitions: set[str] = set()
        self._ready = False
        self._last_beat = time.monotonic()

    # --- what the worker reports (from the event loop) ----------------------------------------

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        self._records.inc(records)
        self._bad_records.inc(bad_records)
        self._bytes.inc(nbytes)

    def partition_position(self, label: str, position: Position, size: int) -> None:
        self._partitions.add(label)
        self._position.labels(label).set(position.offset)
        self._lag_bytes.labels(label).set(max(0, size - position.offset))

    def partition_gone(self, label: str) -> None:
        if label in self._partitions:
            self._partitions.discard(label)
            self._position.remove(label)
            self._lag_bytes.remove(label)

    def checkpoint_saved(self, reason: str, seconds: float) -> None:
        self._saves.labels(reason).inc()
        self._save_seconds.observe(seconds)
        self._last_save.set(time.time())

    def loop_alive(self) -> None:
        self._last_beat = time.monotonic()

    def ready(self) -> None:
        self._ready = True

    # --- what the probes read (from the HTTP thread) ------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)

    def is_ready(self) -> bool:
        return self._ready

    def stalled_for(self, now: float | None = None) -> float | None:
        """Seconds since the last heartbeat if that is longer than STALLED_AFTER, else None."""
        age = (time.monotonic() if now is None else now) - self._last_beat
        return age if age > STALLED_AFTER else None
