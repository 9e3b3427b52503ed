"""Kafka partitions on the metrics endpoint: real workers on a real broker, scraped over HTTP.

Each owned Kafka partition is a series of its own (`topic:partition`), with its position and its
lag in messages (log end minus the group's committed offset); a revoked one is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import Broker
from tests.kafka_support import committed_offsets, create_topic, kafka_env, noisy_numbers
from tests.oracle import expected_of
from tests.processes import WorkerProcess, cli
from tests.scrape import Samples, by_label, get, samples_of

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Workers a test starts; any still running at its end is killed."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def _published(kafka: Broker, workdir: Path, lines: int) -> tuple[dict[str, str], str, bytes]:
    """A topic of PARTITIONS partitions holding `lines` noisy lines; (environment, group, data)."""
    topic = create_topic(kafka, PARTITIONS)
    group = f"group-{topic}"
    env = kafka_env(
        kafka,
        topic,
        group,
        WORKER_CHECKPOINT_INTERVAL="0.2",
        WORKER_METRICS_ADDRESS="127.0.0.1:0",
    )
    data = noisy_numbers(lines, seed=5)
    (workdir / "numbers.txt").write_bytes(data)
    done = cli(["publish", "--lines-per-message", "50"], workdir, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return env, group, data


def _scrape(worker: WorkerProcess) -> Samples:
    status, text = get(f"http://{worker.wait_for('metrics_listening')['address']}/metrics")
    assert status == 200
    return samples_of(text)


def _until(worker: WorkerProcess, wanted: Callable[[Samples], bool], timeout: float) -> Samples:
    """Scrape until `wanted` holds; fail with the last scrape after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    samples = _scrape(worker)
    while not wanted(samples):
        assert time.monotonic() < deadline, f"never seen; last scrape: {samples}"
        time.sleep(0.2)
        samples = _scrape(worker)
    return samples


def _lags(samples: Samples) -> dict[str, float]:
    return by_label(samples, "checkpoint_worker_lag_messages", "partition")


def test_each_kafka_partition_has_its_position_and_a_message_lag_that_ends_at_0(
    kafka: Broker, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Paced, the lag is seen above 0; caught up, each partition's lag is 0 and its position is
    the group's committed offset; the counters hold what this process consumed."""
    env, group, data = _published(kafka, tmp_path, 30_000)
    names = {f"{env['WORKER_KAFKA_TOPIC']}:{n}" for n in range(PARTITIONS)}
    worker = WorkerProcess(["--follow"], tmp_path, {**env, "WORKER_MAX_RATE": "6000"})
    workers.append(worker)
    _until(worker, lambda s: set(_lags(s)) == names and sum(_lags(s).values()) > 0, timeout=60)
    worker.wait_for("caught_up", timeout=90)
    samples = _until(worker, lambda s: set(_lags(s).values()) == {0}, timeout=30)
    committed = committed_offsets(kafka, group)
    positions = by_label(samples, "checkpoint_worker_position", "partition")
    assert positions == {
        f"{env['WORKER_KAFKA_TOPIC']}:{n}": entry.offset for n, entry in committed.items()
    }
    assert set(_lags(samples)) == names
    assert not by_label(samples, "checkpoint_worker_lag_bytes", "partition")
    expected = expected_of(data)
    assert samples[("checkpoint_worker_records_total", ())] == expected.records
    assert samples[("checkpoint_worker_bad_records_total", ())] == expected.bad_records


def test_a_revoked_kafka_partition_has_its_series_dropped(
    kafka: Broker, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """A second member joins: the first one's series are then those of the partitions it still
    owns, not the ones the group moved away."""
    env, _group, _data = _published(kafka, tmp_path, 30_000)
    first = WorkerProcess(["--follow"], tmp_path, {**env, "WORKER_MAX_RATE": "500"})
    workers.append(first)
    first.wait_for("partitions_assigned", timeout=60)
    assert len(_lags(_until(first, lambda s: len(_lags(s)) == PARTITIONS, timeout=30))) == 3
    (tmp_path / "second").mkdir()
    second = WorkerProcess(["--follow"], tmp_path / "second", env)
    workers.append(second)
    first.wait_for("partitions_revoked", timeout=60)
    deadline = time.monotonic() + 60
    while len(first.named("partitions_assigned")) < 2:
        assert time.monotonic() < deadline, "the first worker was never assigned again"
        time.sleep(0.1)
    kept = set(first.named("partitions_assigned")[-1]["partitions"])
    assert 0 < len(kept) < PARTITIONS
    samples = _until(first, lambda s: set(_lags(s)) == kept, timeout=30)
    assert set(by_label(samples, "checkpoint_worker_position", "partition")) == kept
