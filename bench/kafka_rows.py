"""Row 12: the Kafka source against a real broker (`tests/kafka_broker.py`, started for the row).

Rule 1 of `rows.py` holds: the drains are interleaved with the file source on the same numbers
(the baseline), best of a few runs, and only runs that end with the exact sum count.
Rule 2: Kafka's own Java consumer (its tools' ConsumerPerformance, from the broker's jars) reads
        the same topic in the same invocation: the reference for what a consumer gets from this
        broker on this machine.
Rule 3: the hand-over after a SIGKILL is compared with its floor, the session timeout: the group
        cannot move a silent member's partitions sooner. Both members are paced, and the heir
        stays for every trial, so a wait that comes with a gained partition (or grows with the
        trials) shows.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path

from tests.kafka_broker import Broker, jars_dir, start_broker
from tests.kafka_support import create_topic
from tests.processes import WorkerProcess

from . import inputs
from .inputs import Input
from .processes import WORKER, events_of, live_worker, run
from .report import Measurement
from .runs import Bench

__all__ = ["kafka"]

PARTITIONS = 4
SESSION_TIMEOUT = 3.0
HAND_OVERS = 20
HAND_OVER_RATE = 1000  # records per second, each of the two paced members
RESCALES = 5  # a third member joins, then leaves


def _kafka_args(broker: Broker, topic: str, group: str, directory: Path, *extra: str) -> list[str]:
    return [
        WORKER,
        "run",
        "--source",
        "kafka",
        "--kafka-bootstrap-servers",
        broker.plaintext,
        "--kafka-topic",
        topic,
        "--kafka-group",
        group,
        "--kafka-session-timeout",
        str(SESSION_TIMEOUT),
        "--checkpoint",
        str(directory / "checkpoint.json"),
        "--result",
        str(directory / "result.json"),
        "--log-format",
        "json",
        *extra,
    ]


def _publish(broker: Broker, source: Input, directory: Path, *extra: str) -> tuple[str, float]:
    topic = create_topic(broker, PARTITIONS)
    argv = [WORKER, "publish", "--input", str(source.path), "--kafka-topic", topic]
    argv += ["--kafka-bootstrap-servers", broker.plaintext, "--log-format", "json", *extra]
    finished = run(argv, directory / f"publish-{topic}.jsonl")
    if finished.code != 0:
        raise RuntimeError(f"publish exited {finished.code}: {finished.stdout[-500:]}")
    return topic, finished.wall


def _drain(
    broker: Broker, topic: str, source: Input, scratch: Path, workers: int
) -> tuple[float, float]:
    """Seconds for `workers` fresh members of a new group to drain the topic, exactly: whole
    processes, and from the first assignment to the last member's completion (the reading)."""
    group = f"bench-{time.monotonic_ns()}"
    started = time.perf_counter()
    live = []
    for index in range(workers):
        directory = scratch / f"drain-{group}-{index}"
        directory.mkdir(parents=True)
        live.append((directory, live_worker(_kafka_args(broker, topic, group, directory))))
    try:
        for directory, worker in live:
            if worker.finish(timeout=600) != 0:
                raise RuntimeError(f"a Kafka worker failed: {worker.events[-3:]}")
            result = json.loads((directory / "result.json").read_text())
            if (result["sum"], result["records"]) != (source.sum, source.records):
                raise RuntimeError(f"Kafka workers summed {result['sum']}, expected {source.sum}")
    finally:
        for _directory, worker in live:
            worker.kill()
    wall = time.perf_counter() - started
    assigned = min(
        _at(e) for _, worker in live for e in worker.named("partitions_assigned") if e["partitions"]
    )
    completed = max(_at(worker.named("completed")[0]) for _, worker in live)
    return wall, completed - assigned


def _file_drain(source: Input, scratch: Path) -> tuple[float, float]:
    """Seconds for the file source on the same records: the whole process, and from its first
    chunk to its completion (a fresh run reads right after it finds no checkpoint)."""
    directory = scratch / f"file-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    argv = [WORKER, "run", "--input", str(source.path), "--log-format", "json"]
    argv += ["--checkpoint", str(directory / "c.json"), "--result", str(directory / "r.json")]
    finished = run(argv, directory / "log.jsonl")
    result = json.loads((directory / "r.json").read_text())
    if finished.code != 0 or result["sum"] != source.sum:
        raise RuntimeError(f"the file source failed on {source.path}")
    events = {e["event"]: e for e in reversed(events_of(finished.stdout))}
    return finished.wall, _at(events["completed"]) - _at(events["checkpoint_not_found"])


def _java_consumer(broker: Broker, topic: str, messages: int) -> float:
    """Seconds Kafka's own Java consumer takes to fetch `messages` of the topic, as its
    ConsumerPerformance tool reports it (`fetch.time.ms`: from its first assignment on)."""
    argv = ["java", "-cp", f"{jars_dir()}/*", "org.apache.kafka.tools.ConsumerPerformance"]
    argv += ["--bootstrap-server", broker.plaintext, "--topic", topic, "--messages", str(messages)]
    argv += ["--group", f"java-{time.monotonic_ns()}", "--timeout", "60000"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"ConsumerPerformance failed: {(done.stdout + done.stderr)[-500:]}")
    figures = dict(zip(lines[-2].split(", "), lines[-1].split(", "), strict=True))
    if int(figures["data.consumed.in.nMsg"]) != messages:
        raise RuntimeError(f"ConsumerPerformance read {figures['data.consumed.in.nMsg']} messages")
    return int(figures["fetch.time.ms"]) / 1000


def _first_commits_after(
    heir: WorkerProcess, since: float, partitions: set[str], timeout: float
) -> dict[str, float]:
    """For each of `partitions`, seconds from `since` (wall clock) to the heir's first commit of
    it: the timer commits only partitions that read something, so that commit follows the heir's
    first record of the partition by at most one checkpoint interval."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < len(partitions):
        for event in heir.named("checkpoint_saved"):
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            for name in partitions & set(event["partitions"]):
                if at > since and name not in found:
                    found[name] = at - since
        time.sleep(0.02)
    return found


def _paced_member(broker: Broker, topic: str, group: str, directory: Path) -> WorkerProcess:
    """A following member of `group`, paced at HAND_OVER_RATE, committing every 0.1 s."""
    directory.mkdir(parents=True)
    paced = ("--follow", "--max-rate", str(HAND_OVER_RATE), "--checkpoint-interval", "0.1")
    return live_worker(_kafka_args(broker, topic, group, directory, *paced))


def _hand_overs(broker: Broker, topic: str, scratch: Path, trials: int) -> list[float]:
    """Seconds from each SIGKILL of a paced member to the surviving paced member's first record
    of each partition the killed one owned: one heir for every trial, a fresh victim each time,
    so a delay that grows over the trials shows too."""
    group = f"bench-kill-{time.monotonic_ns()}"

    def member(name: str) -> WorkerProcess:
        return _paced_member(broker, topic, group, scratch / f"{group}-{name}")

    heir = member("heir")
    seconds: list[float] = []
    try:
        heir.wait_for("checkpoint_saved", timeout=60)
        for trial in range(trials):
            victim = member(f"victim-{trial}")
            try:
                victim.wait_for("checkpoint_saved", timeout=60)
                time.sleep(0.5)
                owned = set(victim.named("partitions_assigned")[-1]["partitions"])
                if not owned:
                    raise RuntimeError("the victim owned no partition")
                victim.process.send_signal(signal.SIGKILL)
                killed = time.time()
                found = _first_commits_after(heir, killed, owned, timeout=60)
            finally:
                victim.kill()
            if len(found) < len(owned):
                raise RuntimeError(f"trial {trial}: {sorted(owned - set(found))} not read in 60 s")
            seconds += found.values()
    finally:
        heir.kill()
    return seconds


def _reading_again_after(
    members: list[WorkerProcess], since: float, partitions: int, timeout: float = 60
) -> float:
    """Seconds from `since` (wall clock) until every partition was committed by the member the
    rebalance after `since` gave it, after that assignment (a paced member commits only what it
    read, so that is its owner reading it again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reading: dict[str, float] = {}
        for member in members:
            assigned = [
                e for e in member.named("partitions_assigned") if _at(e) > since and e["partitions"]
            ]
            if not assigned:
                continue
            latest = assigned[-1]
            for event in member.named("checkpoint_saved"):
                for name in set(latest["partitions"]) & set(event["partitions"]):
                    if _at(event) > _at(latest) and name not in reading:
                        reading[name] = _at(event) - since
        if len(reading) == partitions:
            return max(reading.values())
        time.sleep(0.05)
    raise RuntimeError(f"not every partition read again within {timeout:.0f} s")


def _at(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _rescales(broker: Broker, topic: str, scratch: Path, trials: int) -> tuple[list[float], ...]:
    """Seconds from a member's join (its process started) and from a member's leave (SIGTERM)
    to every partition reading again, in a group of two paced members that stay."""
    group = f"bench-scale-{time.monotonic_ns()}"

    def member(name: str) -> WorkerProcess:
        return _paced_member(broker, topic, group, scratch / f"{group}-{name}")

    stay = [member("a"), member("b")]
    joins: list[float] = []
    leaves: list[float] = []
    try:
        _reading_again_after(stay, 0.0, PARTITIONS)
        for trial in range(trials):
            joined = time.time()
            joiner = member(f"joiner-{trial}")
            try:
                joins.append(_reading_again_after([*stay, joiner], joined, PARTITIONS))
                time.sleep(0.5)
                left = time.time()
                joiner.process.send_signal(signal.SIGTERM)
                leaves.append(_reading_again_after(stay, left, PARTITIONS))
                if joiner.finish(timeout=30) != 0:
                    raise RuntimeError(f"a leaving member failed: {joiner.events[-3:]}")
            finally:
                joiner.kill()
    finally:
        for worker in stay:
            worker.kill()
    return joins, leaves


def kafka(bench: Bench) -> list[Measurement]:
    count = 1_000_000 if bench.plan.worker_runs == 1 else 10_000_000
    source = inputs.numbers_file(count, seed=3)
    scratch = bench.fresh("kafka")
    broker = start_broker()
    try:
        topic, publish_s = _publish(broker, source, scratch)
        messages = math.ceil((source.records or count) / 1000)  # publish's default per message
        files, ones, twos, javas = [], [], [], []
        for _ in range(max(1, bench.plan.baseline_runs)):
            files.append(_file_drain(source, scratch))
            ones.append(_drain(broker, topic, source, scratch, 1))
            twos.append(_drain(broker, topic, source, scratch, 2))
            javas.append(_java_consumer(broker, topic, messages))
        file_reading = min(reading for _, reading in files)
        one_reading = min(reading for _, reading in ones)
        # Small messages, so a paced member reads a few at a time, as with a live stream.
        paced_topic, _ = _publish(broker, source, scratch, "--lines-per-message", "100")
        hand_overs = sorted(_hand_overs(broker, paced_topic, scratch, HAND_OVERS))
        joins, leaves = _rescales(broker, paced_topic, scratch, RESCALES)
    finally:
        broker.stop()
    one, two, file = (min(wall for wall, _ in runs) for runs in (ones, twos, files))
    p95 = hand_overs[math.ceil(0.95 * len(hand_overs)) - 1]
    records = source.records or count
    return [
        Measurement(
            12,
            f"Kafka: drain {records:,} records ({PARTITIONS} partitions), one worker",
            f"{one:.2f} s",
            f"file source {file:.2f} s",
            f"{one / file:.1f}x",
            "<= 5x the file source",
            one / file <= 5,
            {
                "kafka_one_s": [wall for wall, _ in ones],
                "file_s": [wall for wall, _ in files],
                "publish_s": publish_s,
            },
        ),
        Measurement(
            12,
            "  records per second, one worker from its first assignment (file: first chunk)",
            f"{records / one_reading:,.0f}/s",
            f"file source {records / file_reading:,.0f}/s",
            f"{file_reading / one_reading:.1%}",
            ">= 50%",
            file_reading / one_reading >= 0.5,
            {"kafka_one_reading_s": [r for _, r in ones], "file_reading_s": [r for _, r in files]},
        ),
        Measurement(
            12,
            "  the same, Kafka's own Java consumer (ConsumerPerformance) on the same topic",
            f"{records / one_reading:,.0f}/s",
            f"Java consumer {records / min(javas):,.0f}/s",
            f"{min(javas) / one_reading:.1f}x faster",
            "(context: the reference client here)",
            None,
            {"java_fetch_s": javas},
        ),
        Measurement(
            12,
            "Kafka: the same drain with two workers in one group",
            f"{two:.2f} s",
            f"one worker {one:.2f} s",
            f"{two / one:.2f}x",
            "(context: 2 cores shared with the broker)",
            None,
            {"kafka_two_s": [wall for wall, _ in twos]},
        ),
        Measurement(
            12,
            f"Kafka: SIGKILL to the heir's first record of each moved partition, p95 of "
            f"{len(hand_overs)}",
            f"{p95:.2f} s",
            f"session timeout {SESSION_TIMEOUT:.0f} s",
            f"max {hand_overs[-1]:.2f} s",
            "p95 <= session timeout + 1 s, max + 2 s",
            p95 <= SESSION_TIMEOUT + 1 and hand_overs[-1] <= SESSION_TIMEOUT + 2,
            {"hand_over_s": hand_overs},
        ),
        *(
            Measurement(
                12,
                f"Kafka: a member {what} to every partition reading again, median of {len(times)}",
                f"{statistics.median(times):.2f} s",
                f"session timeout {SESSION_TIMEOUT:.0f} s",
                f"max {max(times):.2f} s",
                "(context)",
                None,
                {f"{key}_s": times},
            )
            for what, key, times in (
                ("joins (process start)", "join", joins),
                ("leaves (SIGTERM)", "leave", leaves),
            )
        ),
    ]
