"""What the worker exposes to Prometheus, and the health and readiness the probes answer.

Rule 1: the event loop only adds to plain numbers here; the Prometheus series are built from
        them when a scrape asks (a custom collector in a `CollectorRegistry` of its own, never the
        global default one). So the hot path takes no lock, two workers in one process never
        share a series, and prometheus_client is imported at the first scrape, not at start-up.
Rule 2: the counters count what this process consumed since it started, without labels; a
        resumed run starts them at 0. Totals since the very beginning are in the checkpoint.
Rule 3: per-partition gauges carry a `partition` label (a file's path; Kafka's `topic:partition`)
        and a vanished partition's series are gone from the next scrape, not left at their last
        value. Lag is `lag_bytes` for files and `lag_messages` for Kafka. At most
        `MAX_PARTITION_SERIES` partitions (the first by label) have series of their own; the
        rest are summed into one series labelled `OTHER_PARTITIONS`, so 20,000 files are not
        40,000 series.
Rule 4: health is the event loop's heartbeat, read by another thread: a loop that has not beaten
        for `STALLED_AFTER` seconds is stalled, even though the process and this thread live.
        A probe that finds the beat stale waits up to `BEAT_AWAITED` for a fresh one first: a
        process resumed after SIGSTOP has a stale beat, and beats again at once.
Rule 5: serving is not this module's: `Metrics` is given what serves it (the endpoint, in
        endpoint.py) and starts and stops it with the run.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from service.health import STALE_AFTER
from service.lifecycle.partition import Standing
from service.storage.lock import HEARTBEAT_INTERVAL
from service.telemetry.port import GaugeBoard, Telemetry

if TYPE_CHECKING:
    from service.lifecycle.partition import Gauge
    from service.telemetry.logs import Logger

__all__ = [
    "BEAT_AWAITED",
    "MAX_PARTITION_SERIES",
    "OTHER_PARTITIONS",
    "SAVE_BUCKETS",
    "SAVE_REASONS",
    "STALLED_AFTER",
    "Metrics",
    "Server",
]

# The same threshold as `healthcheck`'s stale heartbeat: the loop beats every second.
STALLED_AFTER = STALE_AFTER
BEAT_AWAITED = 2 * HEARTBEAT_INTERVAL  # before a stale beat is a stall (the loop may be resuming)
SAVE_REASONS = ("timer", "shutdown", "completed")
# A checkpoint write is a temporary file, two fsyncs and a rename: milliseconds on a healthy disk,
# seconds on a stalled one.
SAVE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PREFIX = "checkpoint_worker_"
MAX_PARTITION_SERIES = 500
OTHER_PARTITIONS = "_other"


class Server(Protocol):
    """What serves the metrics while the worker runs."""

    def close(self) -> None: ...


class Metrics(Telemetry):
    """The worker's numbers, its readiness and its event loop's last heartbeat; served, if
    `serve` is given, from `open` to `close`."""

    def __init__(
        self,
        checkpoint_interval: float = 1.0,
        serve: Callable[[Metrics, Logger], Server] | None = None,
    ) -> None:
        self._serve = serve
        self._server: Server | None = None
        self._checkpoint_interval = checkpoint_interval
        self._standing = Standing(0)
        self._records = 0
        self._bad_records = 0
        self._bytes = 0
        self._saves = dict.fromkeys(SAVE_REASONS, 0)
        self._save_buckets = [0] * (len(SAVE_BUCKETS) + 1)  # the last one is +Inf
        self._save_seconds = 0.0
        # Until the first save, the start: what was saved before is the state then, and a
        # timer save comes within an interval (an alert on its age must not fire at start-up).
        self._last_save = time.time()
        self._gauges = GaugeBoard()
        self._ready = False
        self._unreachable: str | None = None  # why, while the input cannot be read
        self._last_beat = time.monotonic()
        self._registry: Any = None

    # --- what the worker reports (from the event loop) ----------------------------------------

    def open(self, log: Logger) -> None:
        if self._serve is not None:
            self._server = self._serve(self, log)

    def close(self) -> None:
        self._ready = False  # shutting down: a balancer should stop sending work here
        if self._server is not None:
            self._server.close()
            self._server = None

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        self._records += records
        self._bad_records += bad_records
        self._bytes += nbytes

    def partition_gauges(self, partition: object, gauges: list[Gauge]) -> None:
        self._gauges.report(partition, gauges)

    def partition_gone(self, partition: object) -> None:
        self._gauges.forget(partition)

    def checkpoint_saved(self, reason: str, seconds: float) -> None:
        self._saves[reason] = self._saves.get(reason, 0) + 1
        self._save_buckets[bisect.bisect_left(SAVE_BUCKETS, seconds)] += 1
        self._save_seconds += seconds
        self._last_save = time.time()

    def loop_alive(self) -> None:
        self._last_beat = time.monotonic()

    def standing(self, standing: Standing) -> None:
        self._standing = standing

    def ready(self) -> None:
        self._ready = True

    def reachable(self, yes: bool, why: str = "the input cannot be reached") -> None:
        self._unreachable = None if yes else why

    # --- what the probes read (from the HTTP threads) -----------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """(the Prometheus text format of every series, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[Any]:
        """The series as of now (prometheus_client's collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        yield CounterMetricFamily(
            _PREFIX + "records", "Valid records consumed by this process", self._records
        )
        yield CounterMetricFamily(
            _PREFIX + "bad_records",
            "Bad records consumed (skipped) by this process",
            self._bad_records,
        )
        yield CounterMetricFamily(
            _PREFIX + "bytes_consumed", "Bytes of input consumed by this process", self._bytes
        )
        saves = CounterMetricFamily(
            _PREFIX + "checkpoint_saves", "Checkpoints written, by reason", labels=["reason"]
        )
        for reason, count in dict(self._saves).items():
            saves.add_metric([reason], count)
        yield saves
        counts = list(self._save_buckets)
        cumulative = [sum(counts[: index + 1]) for index in range(len(counts))]
        bounds = [str(bound) for bound in SAVE_BUCKETS] + ["+Inf"]
        yield HistogramMetricFamily(
            _PREFIX + "checkpoint_save_duration_seconds",
            "Time to write one checkpoint atomically and durably",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=self._save_seconds,
        )
        yield GaugeMetricFamily(
            _PREFIX + "last_checkpoint_timestamp_seconds",
            "Unix time of the last checkpoint written by this process (before the first: its "
            "start)",
            self._last_save,
        )
        position = GaugeMetricFamily(
            _PREFIX + "position",
            "Where the next unread record of the partition starts (a file: its byte offset; "
            "Kafka: the next offset)",
            labels=["partition"],
        )
        lags = {
            "bytes": GaugeMetricFamily(
                _PREFIX + "lag_bytes",
                "Bytes of the partition's file not consumed yet (size minus position)",
                labels=["partition"],
            ),
            "messages": GaugeMetricFamily(
                _PREFIX + "lag_messages",
                "Messages of the Kafka partition past the group's last commit (log end minus "
                "committed offset)",
                labels=["partition"],
            ),
        }
        every = self._gauges.all()  # oldest partition first
        # One series a name: a file read on after its name went is folded, and so is, until the
        # loop reports that, an older partition of a name a newer one took (a rotation).
        named: dict[str, Gauge] = {}
        others = [gauge for gauge in every if not gauge.named]
        for gauge in every:
            if gauge.named:
                if gauge.label in named:
                    others.append(named[gauge.label])
                named[gauge.label] = gauge
        gauges = sorted(named.values(), key=lambda gauge: gauge.label)
        for gauge in gauges[:MAX_PARTITION_SERIES]:
            # A file named like the folded series is shown by a path that leads to it too.
            label = gauge.label if gauge.label != OTHER_PARTITIONS else f"./{OTHER_PARTITIONS}"
            position.add_metric([label], gauge.position.offset)
            lags[gauge.unit].add_metric([label], max(0, gauge.lag))
        others += gauges[MAX_PARTITION_SERIES:]
        if others:
            position.add_metric([OTHER_PARTITIONS], sum(g.position.offset for g in others))
            for unit, lag in lags.items():
                of_unit = [max(0, g.lag) for g in others if g.unit == unit]
                if of_unit:
                    lag.add_metric([OTHER_PARTITIONS], sum(of_unit))
        yield position
        yield from lags.values()
        yield GaugeMetricFamily(
            _PREFIX + "partitions",
            "Partitions this process reads now: files, or the Kafka partitions it owns",
            len(every),
        )
        # For alerts (deploy/prometheus/alerts.yml): records at risk, the timer they wait for,
        # readiness, and the partitions a fleet must own between its members.
        standing = self._standing
        yield GaugeMetricFamily(
            _PREFIX + "uncommitted_records",
            "Records consumed by this process and not saved (committed) yet",
            standing.unsaved_records,
        )
        yield GaugeMetricFamily(
            _PREFIX + "checkpoint_interval_seconds",
            "The checkpoint_interval setting: seconds between timer saves",
            self._checkpoint_interval,
        )
        yield GaugeMetricFamily(
            _PREFIX + "ready", "1 when /readyz answers 200, else 0", int(self.is_ready())
        )
        yield GaugeMetricFamily(
            _PREFIX + "event_loop_stalled_seconds",
            "Seconds since the event loop last turned, when that is a stall (/healthz answers "
            "503), else 0; while it is stalled, the other series keep their last values",
            self.stalled_for() or 0.0,
        )
        if standing.partitions is not None:
            yield GaugeMetricFamily(
                _PREFIX + "topic_partitions",
                "Partitions of the Kafka topic, as this member last saw its metadata",
                standing.partitions,
            )

    def is_ready(self) -> bool:
        return self.not_ready_because() is None

    def not_ready_because(self) -> str | None:
        """Why the worker is not ready, or None when it is."""
        if not self._ready:
            return "starting up"
        return self._unreachable

    def stalled_for(self, now: float | None = None) -> float | None:
        """Seconds since the last heartbeat if that is longer than STALLED_AFTER, else None."""
        age = (time.monotonic() if now is None else now) - self._last_beat
        return age if age > STALLED_AFTER else None

    def stalled_after_a_beat_was_due(self) -> float | None:
        """`stalled_for`, asked again until a heartbeat was due: a process just resumed
        (SIGCONT) has a stale beat but turns again at once, and beats within that time."""
        deadline = time.monotonic() + BEAT_AWAITED
        while (stalled := self.stalled_for()) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        return stalled
