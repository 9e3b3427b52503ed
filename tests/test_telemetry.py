"""The telemetry core without processes: the series Metrics keeps, and what the progress says."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.core.position import Position
from service.lifecycle.partition import Gauge
from service.settings import load_settings
from service.telemetry.metrics import (
    BEAT_AWAITED,
    MAX_PARTITION_SERIES,
    OTHER_PARTITIONS,
    STALLED_AFTER,
    Metrics,
)
from service.telemetry.port import Telemetry
from service.telemetry.progress_line import RATE_WINDOW, ProgressLine, RateWindow, describe
from service.telemetry.wiring import _Fanout, telemetry_for


def _file(path: str, offset: int, size: int, **position: int) -> Gauge:
    return Gauge(path, Position(offset=offset, **position), size, size - offset, "bytes")


def _series(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels -> value, parsed back from the exposition text."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(metrics.exposition()[0].decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_consumed_batches_add_up_in_unlabelled_counters() -> None:
    """Each batch adds its records, bad records and bytes to the counters."""
    metrics = Metrics()
    metrics.consumed(10, 1, 70)
    metrics.consumed(5, 0, 30)
    series = _series(metrics)
    assert series["checkpoint_worker_records_total"] == {(): 15}
    assert series["checkpoint_worker_bad_records_total"] == {(): 1}
    assert series["checkpoint_worker_bytes_consumed_total"] == {(): 100}


def test_a_file_named_like_the_folded_series_keeps_a_series_of_its_own() -> None:
    """A file called `_other` (input `*`) beside more files than get series: its series is
    `./_other`, and `_other` is only ever the fold of the rest."""
    metrics = Metrics()
    names = ["_other"] + [f"z{index:04}.txt" for index in range(MAX_PARTITION_SERIES)]
    for name in names:
        metrics.partition_gauges(name, [_file(name, 1, 3)])
    series = _series(metrics)["checkpoint_worker_position"]
    assert series[(("partition", "./_other"),)] == 1
    assert series[(("partition", OTHER_PARTITIONS),)] == 1  # the one file past the cap


def test_a_vanished_partition_has_its_series_dropped() -> None:
    """Gauges per partition label; partition_gone removes that label's series, no other."""
    metrics = Metrics()
    metrics.partition_gauges("a.txt", [_file("a.txt", 40, 100)])
    metrics.partition_gauges("b.txt", [_file("b.txt", 7, 7)])
    series = _series(metrics)
    assert series["checkpoint_worker_position"] == {
        (("partition", "a.txt"),): 40,
        (("partition", "b.txt"),): 7,
    }
    assert series["checkpoint_worker_lag_bytes"][(("partition", "a.txt"),)] == 60
    metrics.partition_gone("a.txt")
    metrics.partition_gone("never-seen")
    series = _series(metrics)
    assert list(series["checkpoint_worker_position"]) == [(("partition", "b.txt"),)]
    assert list(series["checkpoint_worker_lag_bytes"]) == [(("partition", "b.txt"),)]


def test_kafka_partitions_have_message_lag_and_a_revoked_one_is_dropped() -> None:
    """One lifecycle partition reports each owned Kafka partition; the next report replaces the
    list, so a revoked partition's series is gone; its lag is in messages, not bytes."""
    metrics = Metrics()

    def owned(*offsets: tuple[int, int, int]) -> list[Gauge]:
        return [
            Gauge(f"numbers:{n}", Position(offset=at), end, end - committed, "messages")
            for n, (at, end, committed) in enumerate(offsets)
        ]

    metrics.partition_gauges("numbers", owned((90, 100, 80), (5, 5, 5)))
    series = _series(metrics)
    assert series["checkpoint_worker_lag_messages"] == {
        (("partition", "numbers:0"),): 20,
        (("partition", "numbers:1"),): 0,
    }
    assert series["checkpoint_worker_position"][(("partition", "numbers:0"),)] == 90
    assert "checkpoint_worker_lag_bytes" not in series
    metrics.partition_gauges("numbers", owned((100, 100, 100)))
    series = _series(metrics)
    assert series["checkpoint_worker_lag_messages"] == {(("partition", "numbers:0"),): 0}
    assert list(series["checkpoint_worker_position"]) == [(("partition", "numbers:0"),)]


def test_every_save_reason_is_a_series_from_the_start() -> None:
    """Saves by reason start at 0 for each reason, so rate() sees the first one."""
    metrics = Metrics()
    metrics.checkpoint_saved("timer", 0.004)
    series = _series(metrics)
    saves = series["checkpoint_worker_checkpoint_saves_total"]
    assert saves == {(("reason", "completed"),): 0, (("reason", "shutdown"),): 0,
                     (("reason", "timer"),): 1}  # fmt: skip
    assert series["checkpoint_worker_checkpoint_save_duration_seconds_count"] == {(): 1}


def test_two_workers_in_one_process_do_not_share_series() -> None:
    """Each Metrics has its own registry: no collision, no shared counts."""
    first, second = Metrics(), Metrics()
    first.consumed(3, 0, 6)
    assert _series(second)["checkpoint_worker_records_total"] == {(): 0}


@pytest.mark.parametrize(
    ("since_beat", "stalled"),
    [(0.0, False), (STALLED_AFTER - 0.5, False), (STALLED_AFTER + 0.5, True)],
)
def test_stalled_only_past_the_threshold(since_beat: float, stalled: bool) -> None:
    """A loop that beat within STALLED_AFTER seconds is not stalled; beyond it, it is."""
    metrics = Metrics()
    metrics.loop_alive()
    assert (metrics.stalled_for(time.monotonic() + since_beat) is not None) is stalled


def test_a_stale_beat_is_a_stall_only_if_no_beat_comes_while_one_is_due() -> None:
    """A probe finding the beat stale (the process was stopped, SIGSTOP) waits for a fresh one:
    a loop that turns again beats within BEAT_AWAITED, and is not called stalled."""
    metrics = Metrics()
    metrics._last_beat -= STALLED_AFTER + 3  # stopped for that long, resumed just now
    threading.Timer(0.2, metrics.loop_alive).start()
    assert metrics.stalled_after_a_beat_was_due() is None
    metrics._last_beat -= STALLED_AFTER + 3  # and now a loop that does not turn again
    asked = time.monotonic()
    stalled = metrics.stalled_after_a_beat_was_due()
    assert stalled is not None
    assert stalled > STALLED_AFTER + 3
    assert time.monotonic() - asked >= BEAT_AWAITED


def test_ready_only_once_told() -> None:
    """Not ready until start-up reports ready()."""
    metrics = Metrics()
    assert not metrics.is_ready()
    metrics.ready()
    assert metrics.is_ready()


def test_metrics_off_and_no_terminal_is_the_do_nothing_telemetry(no_worker_env: None) -> None:
    """With metrics_address empty and stderr not a terminal, the worker holds a bare Telemetry."""
    assert type(telemetry_for(load_settings({}, None))) is Telemetry


def test_fanout_reports_everything_to_each_part() -> None:
    """Metrics and progress together: every report reaches both."""
    parts = [Metrics(), Metrics()]
    both = _Fanout(list(parts))
    both.ready()
    both.consumed(4, 1, 20)
    both.partition_gauges("a.txt", [_file("a.txt", 20, 30)])
    both.partition_gauges("b.txt", [_file("b.txt", 1, 1)])
    both.partition_gone("b.txt")
    both.checkpoint_saved("shutdown", 0.01)
    both.loop_alive()
    both.close()
    for part in parts:
        series = _series(part)
        assert series["checkpoint_worker_records_total"] == {(): 4}
        assert series["checkpoint_worker_lag_bytes"] == {(("partition", "a.txt"),): 10}
        assert series["checkpoint_worker_checkpoint_saves_total"][(("reason", "shutdown"),)] == 1
        assert part.stalled_for() is None


# --- what the progress line says -----------------------------------------------------------


def test_rate_is_over_the_window_and_falls_to_0_when_nothing_comes() -> None:
    """Records and bytes per second over the last RATE_WINDOW seconds; 0 once idle that long."""
    rates = RateWindow(now=0.0)
    rates.add(100, 700, now=1.0)
    rates.add(100, 700, now=2.0)
    assert rates.rates(now=2.0) == (100.0, 700.0)
    assert rates.rates(now=2.0 + RATE_WINDOW + 0.1) == (0.0, 0.0)


def test_describe_sums_partitions_into_percent_eta_and_sum() -> None:
    """Percent and ETA over all partitions' bytes; partitions at their end are caught up."""
    partitions = [
        _file("a.txt", 250, 1000, records=40, sum=1000),
        _file("b.txt", 250, 250, records=40, sum=-3),
    ]
    line = describe(partitions, records_rate=80.0, bytes_rate=50.0)
    assert line == ProgressLine(percent=40.0, rate=80.0, eta=15.0, sum=997, reading=1, caught_up=1)
    assert line.text() == (
        " 40.0%  80 records/s  ETA 00:15  sum 997  partitions: 1 reading, 1 caught up"
    )


@pytest.mark.parametrize(
    ("partitions", "bytes_rate", "percent", "eta_text"),
    [
        pytest.param([], 0.0, None, "--:--", id="no-partition-yet"),
        pytest.param([_file("a", 10, 10)], 5.0, 100.0, "--:--", id="done"),
        pytest.param([_file("a", 0, 10)], 0.0, 0.0, "--:--", id="no-rate-yet"),
        pytest.param([_file("a", 0, 7_200_000)], 1000.0, 0.0, "2:00:00", id="hours"),
    ],
)
def test_describe_edges(
    partitions: list[Gauge], bytes_rate: float, percent: float | None, eta_text: str
) -> None:
    """Read to the end is 100%; before any partition is known the percent is unknown, not
    100% (a start-up finding thousands of files); without a rate or with nothing left the ETA
    is unknown."""
    line = describe(partitions, records_rate=0.0, bytes_rate=bytes_rate)
    assert line.percent == percent
    assert line.text().startswith("   --%" if percent is None else f"{percent:5.1f}%")
    assert f"ETA {eta_text} " in line.text()
