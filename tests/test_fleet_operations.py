"""Operating a Kafka fleet, end to end against a real broker: the hand-over after a SIGKILL,
broker outages, rescaling.

Every total is compared with the independent oracle of the input file that was published.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import SASL_PASSWORD, SASL_USER, Broker, broker_tool, start_broker
from tests.kafka_support import (
    add_partitions,
    create_topic,
    kafka_env,
    mismatched_commits,
    noisy_numbers,
    settle,
)
from tests.oracle import expected_of
from tests.processes import WorkerProcess, cli, events_of, worker_env
from tests.scrape import get

pytestmark = pytest.mark.kafka

SESSION_TIMEOUT = 3.0  # kafka_env's
OUTAGE = 30.0


def _published(
    broker: Broker, workdir: Path, partitions: int, lines: int, per_message: int = 100
) -> dict[str, str]:
    """A new topic holding `lines` noisy lines, `per_message` to a message; the environment to
    read it."""
    topic = create_topic(broker, partitions)
    env = kafka_env(broker, topic, f"group-{topic}", WORKER_CHECKPOINT_INTERVAL="0.2")
    (workdir / "numbers.txt").write_bytes(noisy_numbers(lines, seed=partitions))
    done = cli(["publish", "--lines-per-message", str(per_message)], workdir, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def _oracle(workdir: Path) -> tuple[int, int, int, int]:
    expected = expected_of((workdir / "numbers.txt").read_bytes())
    return (expected.sum, expected.records, expected.bad_records, expected.lines)


def _totals(report: dict[str, Any]) -> tuple[int, int, int, int]:
    return (int(report["sum"]), report["records"], report["bad_records"], report["lines"])


def _member(workdir: Path, name: str, env: dict[str, str], **settings: str) -> WorkerProcess:
    directory = workdir / name
    directory.mkdir()
    return WorkerProcess([], directory, {**env, **settings})


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _first_reads(
    worker: WorkerProcess, since: float, wanted: set[str], timeout: float
) -> dict[str, float]:
    """Seconds from `since` (wall clock) to `worker`'s first commit of each partition in
    `wanted`: the timer commits only partitions that read something, so a commit follows the
    first record read by at most one checkpoint interval."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < len(wanted):
        for event in worker.named("checkpoint_saved"):
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            for name in wanted & set(event["partitions"]):
                if at > since and name not in found:
                    found[name] = at - since
        time.sleep(0.05)
    return found


@pytest.mark.parametrize(
    ("heir_rate", "per_message"),
    [("1000", 100), ("0", 100), ("1000", 1000)],
    ids=["paced", "unpaced", "paced-a-second-a-message"],
)
def test_after_a_sigkill_the_heir_reads_the_moved_partitions_within_the_session_timeout(
    kafka: Broker, tmp_path: Path, heir_rate: str, per_message: int
) -> None:
    """A paced or unpaced heir reads the first record of each partition a SIGKILLed member
    owned within the session timeout + 2 s: the records those partitions had committed before
    were read by the dead member, and never count against the heir's pace, nor does one moved
    partition's first message (a second of the pace) delay the next one's. Unpaced, it then
    completes the run with the oracle's totals."""
    env = _published(kafka, tmp_path, partitions=6, lines=60_000, per_message=per_message)
    victim = _member(tmp_path, "victim", env, WORKER_MAX_RATE="3000")
    victim.wait_for("checkpoint_saved", timeout=30)
    heir = _member(tmp_path, "heir", env, WORKER_MAX_RATE=heir_rate)
    try:
        heir.wait_for("partitions_assigned", timeout=30, partitions=lambda p: len(p) > 0)
        _wait_until(lambda: len(victim.named("partitions_assigned")) >= 2, timeout=30)
        time.sleep(1.5)  # the moved partitions hold thousands of committed records
        victim.signal(signal.SIGKILL)
        killed = time.time()
        moved = set(victim.named("partitions_assigned")[-1]["partitions"])
        assert moved
        found = _first_reads(heir, killed, moved, timeout=SESSION_TIMEOUT + 10)
        assert set(found) == moved, "".join(heir.raw)
        assert max(found.values()) <= SESSION_TIMEOUT + 2, found
        if heir_rate == "0":  # it reads the rest at once: the group's total is exact
            assert heir.finish(timeout=60) == 0, "".join(heir.raw)
            assert _totals(json.loads((tmp_path / "heir" / "result.json").read_text())) == (
                _oracle(tmp_path)
            )
    finally:
        victim.kill()
        heir.kill()


def _probes(worker: WorkerProcess) -> tuple[int, int]:
    """(the status of /readyz, the status of /healthz) of a worker serving its endpoint."""
    address = worker.wait_for("metrics_listening")["address"]
    return get(f"http://{address}/readyz")[0], get(f"http://{address}/healthz")[0]


def test_three_workers_ride_out_a_broker_stopped_at_start_up_and_frozen_mid_run(
    tmp_path: Path,
) -> None:
    """The broker (its own) stopped for 30 s while three workers start, then frozen for 30 s
    while they read: no worker exits, each says `broker_unavailable` once an outage and
    `broker_available` after it, is not ready but healthy meanwhile, and the group's total is
    the oracle's."""
    broker = start_broker()
    workers: list[WorkerProcess] = []
    try:
        env = _published(broker, tmp_path, partitions=6, lines=60_000)
        settings = {"WORKER_MAX_RATE": "1000", "WORKER_METRICS_ADDRESS": "127.0.0.1:0"}
        with broker.stopped():
            workers = [_member(tmp_path, name, env, **settings) for name in "abc"]
            for worker in workers:
                worker.wait_for("broker_unavailable", timeout=30)
            time.sleep(OUTAGE - 5)
            assert [_probes(worker) for worker in workers] == [(503, 200)] * 3
            assert [worker.process.poll() for worker in workers] == [None] * 3
        for worker in workers:
            worker.wait_for("checkpoint_saved", timeout=60)
        with broker.frozen():
            for worker in workers:
                worker.wait_for("broker_unavailable", timeout=30, message=lambda m: "no" in m)
            time.sleep(OUTAGE - 5)
            assert [_probes(worker) for worker in workers] == [(503, 200)] * 3
        for worker in workers:
            assert worker.finish(timeout=180) == 0, "".join(worker.raw)
        for name, worker in zip("abc", workers, strict=True):
            assert _totals(json.loads((tmp_path / name / "result.json").read_text())) == (
                _oracle(tmp_path)
            )
            assert len(worker.named("broker_unavailable")) == 2
            assert len(worker.named("broker_available")) == 2
            assert not worker.errors
    finally:
        for worker in workers:
            worker.kill()
        broker.stop()


def test_a_login_refused_mid_run_is_one_error_line_at_once_not_an_outage(tmp_path: Path) -> None:
    """The worker's password changed on the broker (its own), which then restarts: the worker's
    next login is refused for good. That is one error line naming the refusal and exit 1 within
    seconds, as at start-up, not an outage waited out to its bound (60 s here) and reported as
    an unreachable broker."""
    broker = start_broker()
    try:
        env = _published(broker, tmp_path, partitions=2, lines=2_000)
        secured = env | {
            "WORKER_KAFKA_BOOTSTRAP_SERVERS": broker.sasl,
            "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "WORKER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "WORKER_KAFKA_SASL_USERNAME": SASL_USER,
            "WORKER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
            "WORKER_KAFKA_UNAVAILABLE_TIMEOUT": "60",
        }
        worker = _member(tmp_path, "a", secured, WORKER_FOLLOW="true")
        worker.wait_for("checkpoint_saved", timeout=60)
        changed = subprocess.run(
            broker_tool(
                "kafka.admin.ConfigCommand",
                *("--bootstrap-server", broker.plaintext, "--alter"),
                *("--add-config", "SCRAM-SHA-256=[password=changed-secret]"),
                *("--entity-type", "users", "--entity-name", SASL_USER),
                directory=broker.directory,
            ),
            capture_output=True,
            timeout=120,
        )
        assert changed.returncode == 0, changed.stderr
        broker.restart()
        restarted = time.monotonic()
        assert worker.finish(timeout=90) == 1
        assert time.monotonic() - restarted < 30
        (error,) = worker.errors
        assert "Authentication" in error["message"] or "SASL" in error["message"], error
        assert "kafka_unavailable_timeout" not in error["message"]
        assert SASL_PASSWORD not in "".join(worker.raw)
    finally:
        broker.stop()


def _publish_lines(directory: Path, env: dict[str, str], lines: bytes) -> None:
    """Publish `lines` from a file of their own (publish resumes each file by its name)."""
    directory.mkdir()
    name = f"{directory.name}.txt"
    (directory / name).write_bytes(lines)
    done = cli(["publish", "--input", name, "--lines-per-message", "1"], directory, env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_partitions_added_mid_run_are_read_within_seconds(kafka: Broker, tmp_path: Path) -> None:
    """A topic grown from 1 to 3 partitions under a following worker: it is given the new
    partitions and reads what is published to them within 30 s, not the client's 5 minutes."""
    env = _published(kafka, tmp_path, partitions=1, lines=1_000)
    worker = _member(tmp_path, "a", env, WORKER_FOLLOW="true")
    try:
        before = worker.wait_for("caught_up", timeout=60)
        add_partitions(kafka, env["WORKER_KAFKA_TOPIC"], 3)
        _publish_lines(tmp_path / "more", env, b"".join(b"%d\n" % n for n in range(1, 31)))
        worker.wait_for(
            "caught_up",
            timeout=30,
            records=before["records"] + 30,
            sum=before["sum"] + sum(range(1, 31)),
        )
        worker.signal(signal.SIGTERM)
        assert worker.finish(timeout=30) == 0, "".join(worker.raw)
        final = worker.wait_for("checkpoint_saved", reason="shutdown")
        assert len(final["partitions"]) == 3
        assert all(offset > 0 for offset in final["partitions"].values()), final
    finally:
        worker.kill()


def _run_bounded_without_a_broker(
    tmp_path: Path, port: int, bound: str
) -> tuple[float, list[dict[str, Any]]]:
    """`run` of a Kafka worker at a port where no broker answers, with `bound` as its
    kafka_unavailable_timeout: exit 1 with one error line naming the setting and no traceback;
    how long it took, and its events."""
    env = worker_env(
        WORKER_SOURCE="kafka",
        WORKER_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        WORKER_KAFKA_UNAVAILABLE_TIMEOUT=bound,
    )
    started = time.monotonic()
    done = cli(["run"], tmp_path, env)
    took = time.monotonic() - started
    assert done.returncode == 1
    events = events_of(done.stdout)
    (error,) = [e for e in events if e["level"] == "error"]
    assert "kafka_unavailable_timeout" in error["message"]
    assert "Traceback" not in done.stdout + done.stderr
    return took, events


def test_past_kafka_unavailable_timeout_without_a_broker_is_one_line_and_exit_1(
    tmp_path: Path,
) -> None:
    """No broker at the address and a 3 s bound: one warning, one error line naming the
    setting, exit 1 soon after the bound, no traceback."""
    took, events = _run_bounded_without_a_broker(tmp_path, _closed_port(), "3")
    assert 3 <= took < 10
    assert len([e for e in events if e["event"] == "broker_unavailable"]) == 1


def test_a_broker_address_that_accepts_and_never_answers_is_away_within_seconds(
    tmp_path: Path,
) -> None:
    """A frozen broker (or anything listening there) takes the connection and answers nothing:
    the worker sees no broker within seconds, as a probe does, and the 1 s bound ends it soon
    after; not after the two 10 s request timeouts it once waited first."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes each connection; nothing ever reads or writes
        took, _ = _run_bounded_without_a_broker(tmp_path, silent.getsockname()[1], "1")
    assert took < 12, f"took {took:.1f} s"


def test_status_without_a_broker_says_why_in_words(tmp_path: Path) -> None:
    """`status` of a Kafka worker with no broker at the address: exit 1, one error line saying
    there is no connection, not aiokafka's error name twice and its socket tuples."""
    env = worker_env(
        WORKER_SOURCE="kafka", WORKER_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{_closed_port()}"
    )
    done = cli(["status"], tmp_path, env)
    assert done.returncode == 1
    (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert "(last: no connection to a broker)" in error["message"]
    assert "AddressFamily" not in error["message"]


def test_a_stop_while_no_broker_answers_at_start_up_exits_0_at_once(tmp_path: Path) -> None:
    """A worker waiting for a broker (no bound) is alive to `healthcheck` as to `/healthz`
    (Docker's check turned the container unhealthy while the bound allowed the wait). SIGTERM:
    exit 0 well within shutdown_timeout, with no error."""
    env = worker_env(
        WORKER_SOURCE="kafka",
        WORKER_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{_closed_port()}",
        WORKER_KAFKA_UNAVAILABLE_TIMEOUT="0",
    )
    worker = WorkerProcess([], tmp_path, env)
    worker.wait_for("broker_unavailable", timeout=30)
    time.sleep(1)
    health = cli(["healthcheck"], tmp_path, env)
    assert health.returncode == 0, health.stdout + health.stderr
    sent = worker.signal(signal.SIGTERM)
    assert worker.finish(timeout=30) == 0, "".join(worker.raw)
    assert time.monotonic() - sent < 5
    assert not worker.errors


@pytest.fixture
def silent_dns(tmp_path: Path) -> Iterator[list[str]]:
    """A prefix that runs a command with a resolv.conf of its own (a mount namespace), naming a
    DNS server that reads every query and never answers: a name lookup waits about 10 s."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a resolv.conf of the worker's own")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.77.0.1", 53))
    threading.Thread(target=_swallow, args=(server,), daemon=True).start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.77.0.1\n")
    bind = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
    try:
        yield ["unshare", "--mount", "sh", "-c", bind, "sh"]
    finally:
        server.close()


def _swallow(server: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed at the end of the test
        while True:
            server.recvfrom(4096)


def test_a_stop_while_dns_does_not_answer_for_the_broker_exits_0_at_once(
    tmp_path: Path, silent_dns: list[str]
) -> None:
    """The broker's name is looked up on a DNS server that never answers (as in Docker while
    the broker's container is stopped), holding a thread about 10 s: SIGTERM still exits 0 at
    once, not at the shutdown deadline with exit 1."""
    env = worker_env(
        WORKER_SOURCE="kafka",
        WORKER_KAFKA_BOOTSTRAP_SERVERS="kafka.example:9092",
        WORKER_KAFKA_UNAVAILABLE_TIMEOUT="0",
    )
    worker = WorkerProcess([], tmp_path, env, prefix=silent_dns)
    worker.wait_for("worker_started", timeout=30)
    time.sleep(1)  # the lookup is under way
    sent = worker.signal(signal.SIGTERM)
    assert worker.finish(timeout=30) == 0, "".join(worker.raw)
    assert time.monotonic() - sent < 2
    assert not worker.errors


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Publisher:
    """Appends lines to numbers.txt and publishes them, again and again, until stopped."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.appended = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with (self.workdir / "numbers.txt").open("a") as numbers:
                numbers.write("".join(f"{-n if n % 3 else n}\n" for n in range(1_000)))
            done = cli(["publish", "--lines-per-message", "100"], self.workdir, self.env)
            assert done.returncode == 0, done.stdout + done.stderr
            self.appended += 1_000
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_scaling_one_group_through_1_4_2_3_workers_keeps_every_commit_exact(
    kafka: Broker, tmp_path: Path
) -> None:
    """While a publisher appends, the group goes from 1 to 4 to 2 to 3 workers: after each
    step every partition's committed (offset, records, sum) is what its first `offset`
    messages hold, and at the end the group's totals are the oracle's."""
    partitions = 6
    topic = create_topic(kafka, partitions)
    group = f"group-{topic}"
    env = kafka_env(kafka, topic, group, WORKER_CHECKPOINT_INTERVAL="0.2", WORKER_FOLLOW="true")
    # Ends in '\n', so the publisher's lines are lines of their own.
    (tmp_path / "numbers.txt").write_bytes(noisy_numbers(20_000, seed=20) + b"\n")
    assert cli(["publish", "--lines-per-message", "100"], tmp_path, env).returncode == 0
    publisher = _Publisher(tmp_path, env)
    members: dict[str, WorkerProcess] = {}

    def check() -> None:
        # A partition a worker was just given is committed at its first timer save after a read.
        assert mismatched_commits(kafka, topic, group, partitions) == {}

    try:
        for step, count in enumerate((1, 4, 2, 3)):
            while len(members) < count:
                name = f"w{step}-{len(members)}"
                members[name] = _member(tmp_path, name, env, WORKER_MAX_RATE="3000")
            for name in list(members)[count:]:
                leaving = members.pop(name)
                leaving.signal(signal.SIGTERM)
                assert leaving.finish(timeout=30) == 0, "".join(leaving.raw)
            settle(list(members.values()), partitions)
            check()
        publisher.stop()
        deadline = time.monotonic() + 120
        while (status := json.loads(cli(["status", "--json"], tmp_path, env).stdout))["lag"]:
            assert time.monotonic() < deadline, status
            time.sleep(1)
        check()
        assert (int(status["sum"]), status["records"], status["bad_records"]) == _oracle(tmp_path)[
            :3
        ]
    finally:
        publisher.stop()
        for worker in members.values():
            worker.signal(signal.SIGTERM)
            worker.finish(timeout=30)
