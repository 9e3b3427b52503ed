"""The Kafka source, end to end: real `publish` and `run` processes against a real broker.

Every total is compared with the independent oracle of the input file that was published.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import SASL_PASSWORD, SASL_USER, Broker, start_broker
from tests.kafka_support import (
    committed_offsets,
    create_topic,
    delete_records_before,
    kafka_env,
    noisy_numbers,
)
from tests.oracle import Expected, expected_of
from tests.processes import WorkerProcess, cli, events_of

pytestmark = pytest.mark.kafka


def _publish(workdir: Path, env: dict[str, str], *extra: str) -> None:
    done = cli(["publish", *extra], workdir, env)
    assert done.returncode == 0, done.stdout + done.stderr


def _result(workdir: Path) -> dict[str, Any]:
    loaded = json.loads((workdir / "result.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _totals(report: dict[str, Any]) -> tuple[int, int, int, int]:
    return (int(report["sum"]), report["records"], report["bad_records"], report["lines"])


def _oracle(data: bytes) -> tuple[int, int, int, int]:
    expected: Expected = expected_of(data)
    return (expected.sum, expected.records, expected.bad_records, expected.lines)


def _fatal_lines(stdout: str) -> list[str]:
    return [e["message"] for e in events_of(stdout) if e["level"] == "error"]


@pytest.fixture
def published(kafka: Broker, tmp_path: Path) -> tuple[dict[str, str], bytes]:
    """A 6-partition topic holding 60,000 noisy lines, and the environment to read it."""
    topic = create_topic(kafka, 6)
    env = kafka_env(kafka, topic, f"group-{topic}", WORKER_CHECKPOINT_INTERVAL="0.2")
    data = noisy_numbers(60_000, seed=9)
    (tmp_path / "numbers.txt").write_bytes(data)
    _publish(tmp_path, env, "--lines-per-message", "100")
    return env, data


@pytest.mark.parametrize("lines_per_message", [1, 7, 1000])
def test_publish_then_run_equals_the_oracle(
    kafka: Broker, tmp_path: Path, lines_per_message: int
) -> None:
    """Publish a file, run one worker: result.json and `status` hold the oracle's totals."""
    topic = create_topic(kafka, 3)
    env = kafka_env(kafka, topic, f"group-{topic}")
    data = noisy_numbers(3_000, seed=lines_per_message)
    (tmp_path / "numbers.txt").write_bytes(data)
    _publish(tmp_path, env, "--lines-per-message", str(lines_per_message))
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 0, done.stdout
    assert _totals(_result(tmp_path)) == _oracle(data)
    status = cli(["status", "--json"], tmp_path, env)
    report = json.loads(status.stdout)
    assert (_totals(report), report["lag"], report["completed"]) == (_oracle(data), 0, True)
    bad = [e for e in events_of(done.stdout) if e["event"] == "bad_record"]
    assert bad
    assert all({"partition", "offset", "line"} <= set(e) for e in bad)


def test_a_second_publish_adds_nothing(kafka: Broker, tmp_path: Path) -> None:
    """Publishing the same file again sends no message: each line is in the topic once."""
    topic = create_topic(kafka, 2)
    env = kafka_env(kafka, topic, f"group-{topic}")
    data = noisy_numbers(2_000, seed=3)
    (tmp_path / "numbers.txt").write_bytes(data)
    _publish(tmp_path, env)
    again = cli(["publish"], tmp_path, env)
    assert [e["messages"] for e in events_of(again.stdout) if e["event"] == "published"] == [0]
    assert cli(["run"], tmp_path, env).returncode == 0
    assert _totals(_result(tmp_path)) == _oracle(data)


def test_publish_killed_at_random_instants_leaves_each_line_once(
    kafka: Broker, tmp_path: Path
) -> None:
    """SIGKILL a publish mid-way several times, publish again: the topic holds each line once."""
    topic = create_topic(kafka, 4)
    env = kafka_env(kafka, topic, f"group-{topic}")
    data = noisy_numbers(150_000, seed=4)
    (tmp_path / "numbers.txt").write_bytes(data)
    kills = 0
    for delay in (1.2, 1.6, 2.0):
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "publish", "--lines-per-message", "5"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        if process.poll() is None:
            process.kill()
            kills += 1
        process.communicate()
    assert kills, "every publish finished before its kill: make the input larger"
    _publish(tmp_path, env, "--lines-per-message", "5")
    assert cli(["run"], tmp_path, env).returncode == 0
    assert _totals(_result(tmp_path)) == _oracle(data)


def test_publish_to_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    """No broker at the address: one error line naming it, exit 1, well within the timeout."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    (tmp_path / "numbers.txt").write_bytes(b"1\n")
    env = kafka_env(Broker(address, "", tmp_path, None), "numbers", "g")
    started = time.monotonic()
    done = cli(["publish"], tmp_path, env, timeout=60)
    assert done.returncode == 1
    assert [address in line for line in _fatal_lines(done.stdout)] == [True]
    assert "Traceback" not in done.stdout + done.stderr
    assert time.monotonic() - started < 30


def test_a_drain_commits_and_ends_when_its_partitions_reach_the_target_not_on_the_timer(
    published: tuple[dict[str, str], bytes], tmp_path: Path
) -> None:
    """Not following, a member whose partitions are all read commits them at once and ends:
    with a 60 s checkpoint interval, no timer commit comes before the completion."""
    env, data = published
    done = cli(["run"], tmp_path, {**env, "WORKER_CHECKPOINT_INTERVAL": "60"})
    assert done.returncode == 0, done.stdout
    events = events_of(done.stdout)
    names = [e["event"] for e in events]
    saves = [e["reason"] for e in events if e["event"] == "checkpoint_saved"]
    assert saves[0] == "targets_reached", saves
    assert "timer" not in saves
    assert names.index("completed") > names.index("checkpoint_saved")
    assert _totals(_result(tmp_path)) == _oracle(data)


def test_two_workers_share_the_partitions_and_the_total_is_exact(
    published: tuple[dict[str, str], bytes], tmp_path: Path
) -> None:
    """Two workers in one group each get partitions; both end with the group's exact total."""
    env, data = published
    paced = {**env, "WORKER_MAX_RATE": "20000"}
    workers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        workers.append(WorkerProcess([], tmp_path / name, paced))
    for worker in workers:
        assert worker.finish(timeout=90) == 0, "".join(worker.raw)
    for name, worker in zip("ab", workers, strict=True):
        assert any(e["partitions"] for e in worker.named("partitions_assigned"))
        assert _totals(_result(tmp_path / name)) == _oracle(data)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_worker_hands_over_from_its_last_commit(
    published: tuple[dict[str, str], bytes], tmp_path: Path, signum: int
) -> None:
    """SIGTERM (a final commit) or SIGKILL (none) on one of two workers: the other resumes its
    partitions from their last commits and the group's total is exact."""
    env, data = published
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = WorkerProcess([], tmp_path / "a", {**env, "WORKER_MAX_RATE": "1500"})
    first.wait_for("partitions_assigned", timeout=30)
    second = WorkerProcess([], tmp_path / "b", {**env, "WORKER_MAX_RATE": "20000"})
    first.wait_for("partitions_revoked", timeout=30)
    time.sleep(2)
    first.signal(signum)
    code = first.finish(timeout=30)
    saves = first.named("checkpoint_saved")
    last: dict[str, int] = {}
    for save in saves:
        last.update(save["partitions"])
    assert code == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
    assert second.finish(timeout=90) == 0, "".join(second.raw)
    assert _totals(_result(tmp_path / "b")) == _oracle(data)
    taken_over: dict[str, int] = {}
    for event in second.named("partitions_assigned")[1:]:
        taken_over.update(event["offsets"])
    moved = sorted(first.named("partitions_assigned")[-1]["partitions"])
    assert moved
    if signum == signal.SIGTERM:
        assert saves[-1]["reason"] == "shutdown"
        assert sorted(saves[-1]["partitions"]) == moved
        assert {p: taken_over[p] for p in moved} == {p: last[p] for p in moved}
    else:  # a commit the broker took just before the kill may not have been logged
        assert all(taken_over[p] >= last.get(p, 0) for p in moved)


def test_progress_says_how_much_of_the_owned_partitions_was_read(
    published: tuple[dict[str, str], bytes], tmp_path: Path
) -> None:
    """A paced worker stopped mid-way: its last `progress` gives the percent of its partitions'
    messages (up to their log end offsets) read, and how many partitions it reads, never 100%
    from the start."""
    env, _data = published
    worker = WorkerProcess([], tmp_path, {**env, "WORKER_MAX_RATE": "3000"})
    worker.wait_for("checkpoint_saved", timeout=30, records=lambda r: r > 0)
    worker.signal(signal.SIGTERM)
    assert worker.finish(timeout=30) == 0
    progress = worker.named("progress")[-1]
    assert 0 < progress["percent"] < 50  # 60,000 lines, stopped within a second at 3,000/s
    assert progress["partitions"] == 6


def _wait_for_progress_after_rebalance(worker: WorkerProcess, timeout: float = 60) -> None:
    """Until `worker` was assigned partitions twice and saved after that, then a little more,
    so it holds progress it has not committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [e["event"] for e in list(worker.events)]
        assigned = [i for i, name in enumerate(events) if name == "partitions_assigned"]
        if len(assigned) >= 2 and "checkpoint_saved" in events[assigned[1] :]:
            time.sleep(0.1)
            return
        time.sleep(0.05)
    raise AssertionError("no save after a second assignment:\n" + "".join(worker.raw))


def test_a_zombie_worker_cannot_commit_after_its_partitions_moved(
    published: tuple[dict[str, str], bytes], tmp_path: Path
) -> None:
    """SIGSTOP a worker past its session timeout, SIGCONT it after the other took over: its
    late commit is rejected and the group's total stays exact."""
    env, data = published
    paced = {**env, "WORKER_MAX_RATE": "2000", "WORKER_FOLLOW": "true"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    zombie = WorkerProcess([], tmp_path / "a", paced)
    zombie.wait_for("partitions_assigned", timeout=30)
    other = WorkerProcess([], tmp_path / "b", {**env, "WORKER_MAX_RATE": "20000"})
    _wait_for_progress_after_rebalance(zombie)
    zombie.signal(signal.SIGSTOP)
    try:
        every = [f"{env['WORKER_KAFKA_TOPIC']}:{n}" for n in range(6)]
        other.wait_for("partitions_assigned", timeout=30, partitions=every)
    finally:
        zombie.signal(signal.SIGCONT)
    zombie.wait_for("commit_rejected", timeout=30)
    assert other.finish(timeout=120) == 0, "".join(other.raw)
    assert _totals(_result(tmp_path / "b")) == _oracle(data)
    zombie.signal(signal.SIGTERM)
    assert zombie.finish(timeout=30) == 0


def test_the_sasl_listener_needs_the_credentials(kafka: Broker, tmp_path: Path) -> None:
    """Over SASL_PLAINTEXT with SCRAM-SHA-256 and the right password (given, or read from a
    file) the run is exact; with a wrong one it is one error line and exit 1; with none, a usage
    error (exit 2)."""
    topic = create_topic(kafka, 2)
    data = noisy_numbers(2_000, seed=5)
    (tmp_path / "numbers.txt").write_bytes(data)
    secured = {
        **kafka_env(kafka, topic, f"group-{topic}"),
        "WORKER_KAFKA_BOOTSTRAP_SERVERS": kafka.sasl,
        "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "WORKER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "WORKER_KAFKA_SASL_USERNAME": SASL_USER,
        "WORKER_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }
    _publish(tmp_path, secured)
    assert cli(["run"], tmp_path, secured).returncode == 0
    assert _totals(_result(tmp_path)) == _oracle(data)
    for command in (["run"], ["status"], ["publish"], ["reset"]):
        # The broker's refusal, at once: not 15 s of "no answer".
        started = time.monotonic()
        wrong = cli(command, tmp_path, {**secured, "WORKER_KAFKA_SASL_PASSWORD": "wrong"})
        assert wrong.returncode == 1, command
        output = wrong.stdout + wrong.stderr
        assert "Authentication" in output or "SASL" in output, (command, output)
        assert "wrong" not in output.replace("WORKER_KAFKA_SASL_PASSWORD", "")
        assert "Traceback" not in output
        assert time.monotonic() - started < 10, command
    missing = {k: v for k, v in secured.items() if k != "WORKER_KAFKA_SASL_PASSWORD"}
    (tmp_path / "password").write_text(SASL_PASSWORD + "\n")
    from_file = {**missing, "WORKER_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password")}
    assert cli(["run"], tmp_path, from_file).returncode == 0
    assert _totals(_result(tmp_path)) == _oracle(data)
    none = cli(["run"], tmp_path, missing)
    assert none.returncode == 2
    assert "kafka_sasl_password" in none.stdout + none.stderr


def test_no_committed_state_and_a_log_that_starts_late_is_fatal(
    kafka: Broker, tmp_path: Path
) -> None:
    """Records deleted before any commit: exit 1, one line naming the partition, nothing read."""
    topic = create_topic(kafka, 1)
    env = kafka_env(kafka, topic, f"group-{topic}")
    (tmp_path / "numbers.txt").write_bytes(noisy_numbers(500, seed=6))
    _publish(tmp_path, env, "--lines-per-message", "10")
    delete_records_before(kafka, topic, 0, 3)
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 1
    [message] = _fatal_lines(done.stdout)
    assert f"{topic}:0" in message
    assert "no committed state" in message
    assert committed_offsets(kafka, f"group-{topic}") == {}


def test_a_committed_offset_below_the_log_start_is_fatal(kafka: Broker, tmp_path: Path) -> None:
    """Records deleted past the group's commit: exit 1, one line naming the partition."""
    topic = create_topic(kafka, 1)
    env = kafka_env(kafka, topic, f"group-{topic}")
    (tmp_path / "numbers.txt").write_bytes(noisy_numbers(500, seed=7))
    _publish(tmp_path, env, "--lines-per-message", "10")
    assert cli(["run"], tmp_path, env).returncode == 0
    committed = committed_offsets(kafka, f"group-{topic}")[0].offset
    (tmp_path / "numbers.txt").write_bytes(noisy_numbers(1_000, seed=7))
    _publish(tmp_path, env, "--lines-per-message", "10")
    delete_records_before(kafka, topic, 0, committed + 5)
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 1
    [message] = _fatal_lines(done.stdout)
    assert f"{topic}:0" in message
    assert "below its log start" in message


def test_a_state_too_large_for_the_commit_metadata_is_fatal(kafka: Broker, tmp_path: Path) -> None:
    """A sum of 5,000 digits does not fit the broker's 4096-byte metadata limit: exit 1, one
    line naming the partition."""
    topic = create_topic(kafka, 1)
    env = kafka_env(kafka, topic, f"group-{topic}", WORKER_MAX_LINE_BYTES="8192")
    (tmp_path / "numbers.txt").write_bytes(b"1\n" + b"9" * 5000 + b"\n")
    _publish(tmp_path, env)
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 1
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # the log's exact 5,000-digit sums
    try:
        [message] = _fatal_lines(done.stdout)
    finally:
        sys.set_int_max_str_digits(limit)
    assert f"{topic}:0" in message
    assert "offset.metadata.max.bytes" in message


def test_reset_refuses_while_the_group_has_members(
    kafka: Broker, published: tuple[dict[str, str], bytes], tmp_path: Path
) -> None:
    """`reset` with a live member: exit 1; after it stopped: the commits are gone and the next
    run counts everything once again."""
    env, data = published
    (tmp_path / "a").mkdir()
    worker = WorkerProcess([], tmp_path / "a", {**env, "WORKER_FOLLOW": "true"})
    worker.wait_for("checkpoint_saved", timeout=30)
    refused = cli(["reset"], tmp_path, env)
    assert refused.returncode == 1
    assert "has members" in _fatal_lines(refused.stdout)[0]
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert cli(["reset"], tmp_path, env).returncode == 0
    assert committed_offsets(kafka, env["WORKER_KAFKA_GROUP"]) == {}
    assert cli(["run"], tmp_path, env).returncode == 0
    assert _totals(_result(tmp_path)) == _oracle(data)


def test_healthcheck_reads_each_workers_own_heartbeat(
    published: tuple[dict[str, str], bytes], tmp_path: Path
) -> None:
    """Two workers in one directory beat in two files; `healthcheck` is 0 while they run and 1
    once both stopped."""
    env, _data = published
    following = {**env, "WORKER_FOLLOW": "true", "WORKER_MAX_RATE": "2000"}
    workers = [WorkerProcess([], tmp_path, following) for _ in range(2)]
    for worker in workers:
        worker.wait_for("partitions_assigned", timeout=30)
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("checkpoint.json.*.heartbeat"))) < 2:
        assert time.monotonic() < deadline, "two running workers, not two heartbeat files"
        time.sleep(0.2)
    healthy = cli(["healthcheck"], tmp_path, env)
    assert healthy.returncode == 0, healthy.stdout
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.finish() == 0
    assert cli(["healthcheck"], tmp_path, env).returncode == 1


def test_publish_to_a_missing_topic_where_the_broker_creates_topics_on_first_use(
    tmp_path: Path,
) -> None:
    """A broker with auto.create.topics.enable (its own, for this test) creates the topic at
    publish's first use, with its default partition count, as a producer's first send would;
    the run then reads every line of it. Workers started first would create it the same way,
    so publish must not depend on which comes first."""
    broker = start_broker({"auto.create.topics.enable": "true", "num.partitions": "3"})
    try:
        topic = f"created-{time.monotonic_ns()}"
        env = kafka_env(broker, topic, f"group-{topic}")
        data = noisy_numbers(3_000, seed=5)
        (tmp_path / "numbers.txt").write_bytes(data)
        _publish(tmp_path, env, "--lines-per-message", "10")
        done = cli(["run"], tmp_path, env)
        assert done.returncode == 0, done.stdout
        assert _totals(_result(tmp_path)) == _oracle(data)
        assert sorted(_result(tmp_path)["partitions"]) == [f"{topic}:{n}" for n in range(3)]
    finally:
        broker.stop()


def test_publish_to_a_missing_topic_the_broker_does_not_create_is_one_line(
    kafka: Broker, tmp_path: Path
) -> None:
    """Where the broker does not create topics on first use, a missing topic is one error line
    that says so, and nothing is published."""
    topic = f"missing-{time.monotonic_ns()}"
    env = kafka_env(kafka, topic, f"group-{topic}")
    (tmp_path / "numbers.txt").write_bytes(noisy_numbers(100, seed=1))
    started = time.monotonic()
    done = cli(["publish"], tmp_path, env)
    assert done.returncode == 1, done.stdout
    (message,) = _fatal_lines(done.stdout)
    assert f"Kafka topic {topic!r} does not exist" in message
    assert "create it first" in message
    assert "Traceback" not in done.stdout + done.stderr
    assert time.monotonic() - started < 8  # the broker says so at once: no 10 s of asking


@pytest.mark.parametrize("follow", [False, True], ids=["run", "follow"])
def test_a_worker_on_a_missing_topic_the_broker_does_not_create_is_one_line(
    kafka: Broker, tmp_path: Path, follow: bool
) -> None:
    """A worker given a topic that does not exist, on a broker that does not create topics on
    first use: one error line that says so and exit 1, at once, not an outage retried for ever
    nor a consumer asking again for its request timeout."""
    topic = f"missing-{time.monotonic_ns()}"
    env = kafka_env(kafka, topic, f"group-{topic}")
    started = time.monotonic()
    done = cli(["run", *(["--follow"] if follow else [])], tmp_path, env)
    assert done.returncode == 1, done.stdout
    (message,) = _fatal_lines(done.stdout)
    assert f"Kafka topic {topic!r} does not exist" in message
    assert "broker_available" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert time.monotonic() - started < 8  # the broker says so at once: no 10 s of asking
    assert "partitions_assigned" not in done.stdout  # found missing before joining the group


def test_a_broker_restart_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The broker (its own, for this test) restarted while a worker reads and commits: the
    worker waits it out, and the total is exact."""
    broker = start_broker()
    try:
        topic = create_topic(broker, 3)
        env = kafka_env(broker, topic, f"group-{topic}", WORKER_CHECKPOINT_INTERVAL="0.2")
        data = noisy_numbers(60_000, seed=11)
        (tmp_path / "numbers.txt").write_bytes(data)
        _publish(tmp_path, env, "--lines-per-message", "100")
        worker = WorkerProcess([], tmp_path, {**env, "WORKER_MAX_RATE": "6000"})
        worker.wait_for("checkpoint_saved", timeout=30)
        broker.restart()
        assert worker.finish(timeout=180) == 0, "".join(worker.raw)
        assert _totals(_result(tmp_path)) == _oracle(data)
    finally:
        broker.stop()


def test_a_stop_while_the_broker_does_not_answer_exits_0_in_time(tmp_path: Path) -> None:
    """SIGTERM while the broker (its own, for this test) is frozen: the final commit is given up
    within shutdown_timeout instead of the watchdog ending the process with exit 1; the last
    lines still say what the worker read (at least what it had committed), and the next run
    resumes from the last accepted commit with the exact total."""
    broker = start_broker()
    try:
        topic = create_topic(broker, 3)
        env = kafka_env(
            broker,
            topic,
            f"group-{topic}",
            WORKER_CHECKPOINT_INTERVAL="0.2",
            WORKER_SHUTDOWN_TIMEOUT="5",
        )
        data = noisy_numbers(30_000, seed=12)
        (tmp_path / "numbers.txt").write_bytes(data)
        _publish(tmp_path, env, "--lines-per-message", "100")
        worker = WorkerProcess([], tmp_path, {**env, "WORKER_MAX_RATE": "3000"})
        worker.wait_for("checkpoint_saved", timeout=30)
        with broker.frozen():
            sent = worker.signal(signal.SIGTERM)
            code = worker.finish(timeout=30)
            took = time.monotonic() - sent
        assert code == 0, "".join(worker.raw)
        assert took < 5
        assert worker.named("commit_rejected", reason="shutdown")
        assert not worker.named("fatal_error")
        committed: dict[str, int] = {}
        for saved in worker.named("checkpoint_saved"):
            committed.update(saved["partitions"])
        (stopped,) = worker.named("worker_stopped")
        last_progress = worker.named("progress")[-1]
        assert stopped["offset"] == last_progress["offset"] >= sum(committed.values()) > 0
        assert 0 < stopped["records"] <= _oracle(data)[1]
        rerun = WorkerProcess([], tmp_path, env)
        assert rerun.finish(timeout=120) == 0, "".join(rerun.raw)
        assert _totals(_result(tmp_path)) == _oracle(data)
    finally:
        broker.stop()
