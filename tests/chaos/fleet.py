"""Chaos part `fleet`: three workers in one group on a 12-partition topic while a publisher appends.

A publisher thread appends whole lines to `in/numbers.txt` and publishes them (`publish`, now and
then SIGKILLed mid-way and run again). Meanwhile the three workers (following) are stopped at
random by SIGKILL or SIGTERM and restarted, the broker is restarted, and one worker is made a
zombie: SIGSTOPped past its session timeout and resumed after its partitions moved. Then, the
publisher still appending, the group is scaled through 1, 4, 2 and 3 workers: after each step,
once every partition has an owner that committed, each partition's committed (records, sum) must
be what its first `offset` messages hold. At the end the publisher finishes, and the group's
committed totals (`status --json`) must equal the oracle's over the whole file: 0 lost,
0 duplicated. The broker is this part's own.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.chaos.tally import Tally
from tests.kafka_broker import Broker, BrokerUnavailable, start_broker
from tests.kafka_support import create_topic, kafka_env, mismatched_commits, settle
from tests.oracle import expected_of
from tests.processes import Unavailable, WorkerProcess, cli

__all__ = ["part"]

WORKERS = 3
PARTITIONS = 12
SESSION_TIMEOUT = 3.0  # kafka_env's kafka_session_timeout
SCALE_STEPS = (1, 4, 2, WORKERS)


class _Publisher(threading.Thread):
    """Appends whole lines and publishes them until stopped; some publishes are SIGKILLed."""

    def __init__(self, work: Path, env: dict[str, str], rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.work, self.env, self.rng = work, env, rng
        self.stopping = threading.Event()
        self.quiet = threading.Lock()  # held by a publish; taken around a broker restart
        self.kills = self.publishes = 0
        self.failures: list[str] = []

    def _append(self) -> None:
        lines = []
        for _ in range(self.rng.randrange(50, 2000)):
            value = self.rng.randrange(-(10**9), 10**9)
            lines.append(b"%d\n" % value if self.rng.random() > 0.02 else b"oops\n")
        with (self.work / "numbers.txt").open("ab") as handle:
            handle.write(b"".join(lines))

    def publish(self, *, kill: bool) -> None:
        argv = [sys.executable, "-m", "service", "publish", "--lines-per-message", "20"]
        process = subprocess.Popen(
            argv, cwd=self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if kill:
            time.sleep(self.rng.uniform(0.3, 1.5))
            if process.poll() is None:
                process.kill()
                self.kills += 1
        out, err = process.communicate(timeout=120)
        self.publishes += 1
        if not kill and process.returncode != 0:
            self.failures.append(
                f"publish exit {process.returncode}: {out[-300:]!r} {err[-300:]!r}"
            )

    def run(self) -> None:
        while not self.stopping.is_set():
            with self.quiet:
                self._append()
                self.publish(kill=self.rng.random() < 0.2)
            time.sleep(self.rng.uniform(0.1, 0.5))


def _status(work: Path, env: dict[str, str]) -> dict[str, Any] | None:
    done = cli(["status", "--json"], work, env, timeout=60)
    if done.returncode != 0:
        return None
    loaded = json.loads(done.stdout)
    return loaded if isinstance(loaded, dict) else None


def _broker(tally: Tally) -> Broker | None:
    try:
        return start_broker()
    except BrokerUnavailable as error:
        if os.environ.get("REQUIRE_KAFKA") == "1":
            tally.violation("fleet", f"REQUIRE_KAFKA=1 but no Kafka broker: {error}")
            return None
        raise Unavailable(f"no Kafka broker: {error}") from None


def part(tally: Tally, work: Path, rng: random.Random, short: bool) -> None:
    """Three workers of one group under kills, broker restarts and a zombie, while publishing."""
    broker = _broker(tally)
    if broker is None:
        return
    try:
        topic = create_topic(broker, PARTITIONS)
        env = kafka_env(
            broker,
            topic,
            f"fleet-{topic}",
            WORKER_FOLLOW="true",
            WORKER_CHECKPOINT_INTERVAL="0.1",
        )
        _run_fleet(tally, work, env, broker, rng, short)
    finally:
        broker.stop()


def _run_fleet(
    tally: Any, work: Path, env: dict[str, str], broker: Broker, rng: random.Random, short: bool
) -> None:
    (work / "numbers.txt").write_bytes(b"")
    homes = [work / f"worker-{n}" for n in range(WORKERS)]
    for home in homes:
        home.mkdir()
    workers = [WorkerProcess([], home, env) for home in homes]
    publisher = _Publisher(work, env, rng)
    publisher.start()
    stops = 10 if short else 200
    broker_restarts = {stops // 2} if short else {stops // 4, stops // 2, 3 * stops // 4}
    zombie_at = stops // 3
    try:
        for life in range(stops):
            time.sleep(rng.uniform(0.1, 0.8))
            index = rng.randrange(WORKERS)
            workers[index].wait_for("worker_started", timeout=60)  # Python has started
            kind = rng.choice([signal.SIGKILL, signal.SIGTERM])
            workers[index].signal(kind)
            code = workers[index].finish(timeout=60)
            tally.fault(f"fleet: {signal.Signals(kind).name} of a worker")
            if kind == signal.SIGTERM and code != 0:
                errors = [e.get("message", e["event"]) for e in workers[index].named("fatal_error")]
                tally.violation(f"fleet life {life}", f"SIGTERM exit {code}: {errors}")
            if "Traceback" in workers[index].stderr:
                tally.violation(f"fleet life {life}", workers[index].stderr[-2000:])
            workers[index] = WorkerProcess([], homes[index], env)
            tally.restart()
            if life in broker_restarts:
                with publisher.quiet:  # a publish may fail while the broker is away
                    broker.restart()
                tally.fault("fleet: broker restart")
            if life == zombie_at:
                _zombie(tally, workers[(index + 1) % WORKERS])
        _rescale(tally, work, env, broker, workers)
    finally:
        publisher.stopping.set()
        publisher.join()
    tally.fault("fleet: publish SIGKILLed mid-way", publisher.kills)
    for failure in publisher.failures:
        tally.violation("fleet publish", failure)
    publisher.publish(kill=False)  # the last appended lines, published once
    expected = expected_of((work / "numbers.txt").read_bytes())
    _final(tally, work, env, expected)
    for worker in workers:
        worker.signal(signal.SIGTERM)
        if worker.finish(timeout=60) != 0:
            tally.violation("fleet final", f"SIGTERM exit; {worker.stderr[-500:]}")


def _rescale(
    tally: Any, work: Path, env: dict[str, str], broker: Broker, workers: list[WorkerProcess]
) -> None:
    """The group through 1, 4, 2 and 3 workers (SIGTERMs and starts), each step checked against
    the topic; `workers` ends with WORKERS members again."""
    topic, group = env["WORKER_KAFKA_TOPIC"], env["WORKER_KAFKA_GROUP"]
    for count in SCALE_STEPS:
        while len(workers) > count:
            leaving = workers.pop()
            leaving.wait_for("worker_started", timeout=60)  # Python has started
            leaving.signal(signal.SIGTERM)
            code = leaving.finish(timeout=60)
            if code != 0:
                tally.violation("fleet rescale", f"SIGTERM exit {code}; {leaving.tail()}")
        while len(workers) < count:
            home = work / f"worker-{len(workers)}"
            home.mkdir(exist_ok=True)
            workers.append(WorkerProcess([], home, env))
        tally.fault(f"fleet: the group scaled to {count} workers")
        try:
            settle(workers, PARTITIONS)
            wrong = mismatched_commits(broker, topic, group, PARTITIONS)
        except AssertionError as error:
            tally.violation(f"fleet rescale to {count}", str(error)[-1000:])
            continue
        for partition, (committed, from_topic) in wrong.items():
            tally.violation(
                f"fleet rescale to {count}",
                f"partition {partition} committed (records, sum) {committed}, "
                f"its messages hold {from_topic}",
            )


def _zombie(tally: Any, worker: WorkerProcess) -> None:
    """SIGSTOP past the session timeout, SIGCONT: its late commits must be rejected."""
    worker.signal(signal.SIGSTOP)
    time.sleep(SESSION_TIMEOUT + 3)
    worker.signal(signal.SIGCONT)
    tally.fault("fleet: zombie (SIGSTOP past the session timeout)")
    try:
        worker.wait_for("commit_rejected", timeout=30)
        tally.observe("fleet: the zombie's late commit was rejected")
    except AssertionError:
        tally.observe("fleet: the zombie had nothing left to commit")


def _final(tally: Any, work: Path, env: dict[str, str], expected: Any) -> None:
    deadline = time.monotonic() + 180
    report: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        report = _status(work, env)
        if report is not None and report["lines"] >= expected.lines and report["lag"] == 0:
            break
        time.sleep(0.5)
    if report is None:
        tally.violation("fleet final", "status --json failed")
        return
    # Kafka offsets count messages, not bytes: the totals are compared, the offset is not.
    tally.final("fleet final", {**report, "offset": expected.offset}, expected)
