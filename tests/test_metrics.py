"""`metrics_address` end to end: real worker processes scraped over real HTTP, parsed as Prometheus.

Each worker binds port 0 and logs the address it got (`metrics_listening`), so no test needs a
fixed port. A stalled event loop is made honestly: strace holds one of the loop's own `fstat`
calls on the input for longer than the stall threshold, while the process and its HTTP thread
live on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.telemetry.metrics import STALLED_AFTER
from tests.oracle import expected_of
from tests.processes import WorkerProcess, cli, events_of, worker_env
from tests.scrape import Samples, by_label, get, samples_of

ANY_PORT = "127.0.0.1:0"
NUMBERS = b"".join(f"{n * 7919 % 1_000_003 - 500_000}\n".encode() for n in range(50_000))
NOISY = NUMBERS + b"oops\n1.5\n\n42\n"


def _env() -> dict[str, str]:
    return worker_env(WORKER_METRICS_ADDRESS=ANY_PORT)


def _get(worker: WorkerProcess, path: str) -> tuple[int, str]:
    """(status, body) of GET `path` on the worker's endpoint."""
    return get(f"http://{worker.wait_for('metrics_listening')['address']}{path}")


def _scrape(worker: WorkerProcess) -> Samples:
    """Every sample of `/metrics`, by name and labels."""
    status, text = _get(worker, "/metrics")
    assert status == 200
    return samples_of(text)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; any still running at its end is killed."""
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.kill()


def _start(
    running: list[WorkerProcess], cwd: Path, *args: str, prefix: tuple[str, ...] = ()
) -> WorkerProcess:
    worker = WorkerProcess(args, cwd, env=_env(), prefix=prefix)
    running.append(worker)
    return worker


def _stop(worker: WorkerProcess, signum: int = signal.SIGTERM) -> None:
    """Stop the worker with `signum`; it must exit 0, gracefully."""
    worker.signal(signum)
    assert worker.finish() == 0


def test_counters_equal_the_result_and_lag_is_0_once_caught_up(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """After a fresh run catches up, the counters equal result.json, position the size, lag 0."""
    (tmp_path / "numbers.txt").write_bytes(NOISY)
    worker = _start(running, tmp_path, "--follow", "--poll-interval", "0.1")
    worker.wait_for("caught_up")
    samples = _scrape(worker)
    result = json.loads((tmp_path / "result.json").read_text())
    expected = expected_of(NOISY, following=True)
    partition = (("partition", "numbers.txt"),)

    assert (result["records"], result["bad_records"]) == (expected.records, expected.bad_records)
    assert samples[("checkpoint_worker_records_total", ())] == result["records"]
    assert samples[("checkpoint_worker_bad_records_total", ())] == result["bad_records"]
    assert samples[("checkpoint_worker_bytes_consumed_total", ())] == result["offset"]
    assert samples[("checkpoint_worker_position", partition)] == len(NOISY)
    assert samples[("checkpoint_worker_lag_bytes", partition)] == 0

    # Appended lines are counted once more, and the lag returns to 0 when they are read.
    with (tmp_path / "numbers.txt").open("ab") as grow:
        grow.write(b"5\n6\n")
    worker.wait_for("caught_up", offset=len(NOISY) + 4)
    samples = _scrape(worker)
    assert samples[("checkpoint_worker_records_total", ())] == expected.records + 2
    assert samples[("checkpoint_worker_lag_bytes", partition)] == 0
    _stop(worker)


def test_checkpoint_saves_are_counted_by_reason_with_a_histogram(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """Saves count by reason; the duration histogram has buckets; the last save time is recent."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    worker = _start(running, tmp_path, "--follow", "--checkpoint-interval", "0.2")
    worker.wait_for("caught_up")
    worker.wait_for("checkpoint_saved", reason="timer")
    samples = _scrape(worker)
    saves = by_label(samples, "checkpoint_worker_checkpoint_saves_total", "reason")
    assert saves["timer"] >= 1
    assert (saves["shutdown"], saves["completed"]) == (0, 0)
    histogram = "checkpoint_worker_checkpoint_save_duration_seconds"
    buckets = by_label(samples, f"{histogram}_bucket", "le")
    assert len(buckets) > 5
    assert buckets["+Inf"] == samples[(f"{histogram}_count", ())] == saves["timer"]
    assert samples[(f"{histogram}_sum", ())] > 0
    last = samples[("checkpoint_worker_last_checkpoint_timestamp_seconds", ())]
    assert time.time() - 60 < last <= time.time()
    _stop(worker)


def test_before_its_first_save_the_last_checkpoint_time_is_the_start(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """A worker saving every 5 minutes has saved nothing of its own a minute in: the series
    gives its start, not 0, so the alert on unsaved records (3 intervals) is quiet."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    started = time.time()
    worker = _start(
        running, tmp_path, "--follow", "--max-rate", "100", "--checkpoint-interval", "300"
    )
    worker.wait_for("metrics_listening")
    samples = _scrape(worker)
    assert samples[("checkpoint_worker_checkpoint_saves_total", (("reason", "timer"),))] == 0
    last = samples[("checkpoint_worker_last_checkpoint_timestamp_seconds", ())]
    assert started <= last <= time.time()
    _stop(worker)


def test_a_scrape_mid_run_shows_partial_progress_and_probes_answer(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """Mid-run: some records counted but not all, a positive lag, /healthz and /readyz 200."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    worker = _start(running, tmp_path, "--max-rate", "20000", "--checkpoint-interval", "0.5")
    worker.wait_for("checkpoint_saved", reason="timer")
    time.sleep(1.1)  # a heartbeat reports the position
    samples = _scrape(worker)
    assert 0 < samples[("checkpoint_worker_records_total", ())] < 50_000
    assert samples[("checkpoint_worker_lag_bytes", (("partition", "numbers.txt"),))] > 0
    assert _get(worker, "/healthz")[0] == 200
    assert _get(worker, "/readyz") == (200, "ready\n")
    assert _get(worker, "/nothing")[0] == 404
    _stop(worker, signal.SIGINT)


def test_readyz_is_503_until_start_up_has_finished(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """While the checkpoint is still being read (its open held by strace), /readyz says 503."""
    assert shutil.which("strace"), "strace is missing: .ci/run installs it"
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    # Start-up opens the checkpoint once, after the endpoint listens: that open waits 5 s.
    prefix: tuple[str, ...] = ("strace", "-f", "-qq", "-o", "/dev/null", "-P", "checkpoint.json")
    prefix += ("-e", "trace=openat", "-e", "inject=openat:delay_enter=5000000:when=1")
    worker = _start(running, tmp_path, "--follow", prefix=prefix)
    pid = worker.wait_for("worker_started")["pid"]  # the worker's own, not strace's
    try:
        assert _get(worker, "/readyz") == (503, "not ready: starting up\n")
        assert _get(worker, "/healthz")[0] == 200
        worker.wait_for("checkpoint_not_found")
        deadline = time.monotonic() + 30
        while _get(worker, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        os.kill(pid, signal.SIGTERM)
        assert worker.finish() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # strace does not pass a SIGKILL on
            os.kill(pid, signal.SIGKILL)


def test_readyz_is_503_while_a_followed_glob_matches_no_file(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """Following a glob: no file yet is not ready; a file that comes makes it ready; the file
    deleted makes it not ready again."""
    worker = _start(running, tmp_path, "--follow", "--input", "in/*.txt", "--poll-interval", "0.05")
    worker.wait_for("waiting_for_files")

    def readiness_becomes(status: int) -> str:
        deadline = time.monotonic() + 10
        while (answer := _get(worker, "/readyz"))[0] != status:
            assert time.monotonic() < deadline, f"/readyz still says {answer}"
            time.sleep(0.05)
        return answer[1]

    assert "no input file" in readiness_becomes(503)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"5\n")
    worker.wait_for("caught_up", sum=5)
    assert readiness_becomes(200) == "ready\n"
    (tmp_path / "in" / "a.txt").unlink()
    assert "no input file" in readiness_becomes(503)
    _stop(worker)


@pytest.mark.slow
def test_healthz_is_503_while_the_event_loop_is_stalled(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """An event loop held in one syscall past STALLED_AFTER: /healthz 503, then 200 again."""
    assert shutil.which("strace"), "strace is missing: .ci/run installs it"
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    stall = STALLED_AFTER + 5
    # The input's newfstatat calls from the 9th on come from the event loop (the reader's
    # position reports, the follow poll); the 9th is held for `stall` seconds.
    hold = f"newfstatat:delay_enter={int(stall * 1e6)}:when=9"
    prefix: tuple[str, ...] = ("strace", "-f", "-qq", "-o", "/dev/null", "-P", "numbers.txt")
    prefix += ("-e", "trace=newfstatat", "-e", f"inject={hold}")
    worker = _start(running, tmp_path, "--follow", prefix=prefix)
    pid = worker.wait_for("worker_started")["pid"]  # the worker's own, not strace's
    try:
        worker.wait_for("caught_up")
        statuses: list[int] = []
        deadline = time.monotonic() + 2 * stall + 10
        while 503 not in statuses or statuses[-1] != 200:
            assert time.monotonic() < deadline, f"statuses seen: {statuses}"
            status, body = _get(worker, "/healthz")
            if status == 503:
                assert body.startswith("stalled")
                if 503 not in statuses:  # `healthcheck` reads the same heartbeat, the same way
                    assert cli(["healthcheck"], tmp_path).returncode == 1
                    # ... and so does the series an alert watches (the others stand still).
                    stalled = _scrape(worker)[("checkpoint_worker_event_loop_stalled_seconds", ())]
                    assert stalled > STALLED_AFTER
            elif not statuses:
                assert _scrape(worker)[("checkpoint_worker_event_loop_stalled_seconds", ())] == 0
            statuses.append(status)
            time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        assert worker.finish() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # strace does not pass a SIGKILL on
            os.kill(pid, signal.SIGKILL)


def test_an_address_in_use_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    """A metrics address another socket holds: one fatal_error naming it, exit 1, no traceback."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = cli(["run", "--metrics-address", address], tmp_path)
    assert (done.returncode, done.stderr) == (1, "")
    errors = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert [e["event"] for e in errors] == ["fatal_error"]
    assert address in errors[0]["message"]
    assert "in use" in errors[0]["message"]
    assert "Traceback" not in done.stdout
    assert not (tmp_path / "checkpoint.json").exists()


def test_metrics_off_by_default_binds_nothing(tmp_path: Path) -> None:
    """Without metrics_address no endpoint is logged and the run is as before."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    done = cli(["run"], tmp_path)
    assert done.returncode == 0
    assert "metrics_listening" not in done.stdout


def test_each_file_of_a_glob_is_a_partition_and_a_deleted_ones_series_is_dropped(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """Per-file gauges carry the file's path; a file deleted while followed drops its series."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"30\n")
    args = ["--input", "in/*.txt", "--follow", "--poll-interval", "0.05"]
    worker = _start(running, tmp_path, *args)
    worker.wait_for("caught_up", sum=33)
    samples = _scrape(worker)
    assert by_label(samples, "checkpoint_worker_position", "partition") == {
        "in/a.txt": 4,
        "in/b.txt": 3,
    }
    assert samples[("checkpoint_worker_records_total", ())] == 3
    assert samples[("checkpoint_worker_partitions", ())] == 2
    (tmp_path / "in" / "a.txt").unlink()
    worker.wait_for("file_removed", path="in/a.txt", reason="deleted")
    samples = _scrape(worker)
    assert by_label(samples, "checkpoint_worker_position", "partition") == {"in/b.txt": 3}
    assert samples[("checkpoint_worker_partitions", ())] == 1
    assert by_label(samples, "checkpoint_worker_lag_bytes", "partition") == {"in/b.txt": 0}
    _stop(worker)


def test_a_rotated_files_series_moves_to_its_new_name(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """A file renamed within the patterns is one partition under its new path: its series is
    not left behind, frozen, under the old one."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "numbers.txt").write_bytes(b"5\n" * 1000)
    args = ["--input", "in/numbers.txt*", "--follow", "--poll-interval", "0.05"]
    worker = _start(running, tmp_path, *args)
    worker.wait_for("caught_up", sum=5000)
    (tmp_path / "in" / "numbers.txt").rename(tmp_path / "in" / "numbers.txt.1")
    worker.wait_for("file_rotated", path="in/numbers.txt.1")
    deadline = time.monotonic() + 10
    while (positions := by_label(_scrape(worker), "checkpoint_worker_position", "partition")) != {
        "in/numbers.txt.1": 2000
    }:
        assert time.monotonic() < deadline, positions
        time.sleep(0.05)
    assert by_label(_scrape(worker), "checkpoint_worker_lag_bytes", "partition") == {
        "in/numbers.txt.1": 0
    }
    _stop(worker)


def test_a_file_rotated_out_and_read_on_leaves_its_name_to_the_new_file(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """`mv in/a.txt in/a.old` (out of `in/*.txt`) and a new `in/a.txt`, while the old file is
    still read (paced): the name's one series is the new file's, and the old file, read on
    under no name, is summed into `_other`, never a second series with the same label."""
    (tmp_path / "in").mkdir()
    old = b"5\n" * 20_000
    (tmp_path / "in" / "a.txt").write_bytes(old)
    args = ["--input", "in/*.txt", "--follow", "--poll-interval", "0.05", "--max-rate", "2000"]
    worker = _start(running, tmp_path, *args, "--close-inactive", "300")
    worker.wait_for("checkpoint_saved", reason="timer")
    (tmp_path / "in" / "a.txt").rename(tmp_path / "in" / "a.old")
    (tmp_path / "in" / "a.txt").write_bytes(b"7\n" * 10)
    deadline = time.monotonic() + 10
    while True:
        status, text = _get(worker, "/metrics")
        assert status == 200
        positions = [ln for ln in text.splitlines() if ln.startswith("checkpoint_worker_position{")]
        if len(positions) == 2:
            break
        assert time.monotonic() < deadline, positions
        time.sleep(0.05)
    samples = samples_of(text)
    named = by_label(samples, "checkpoint_worker_position", "partition")
    assert set(named) == {"in/a.txt", "_other"}
    assert 0 < named["_other"] < len(old)  # the old file, still being read
    assert samples[("checkpoint_worker_partitions", ())] == 2
    _stop(worker)


def test_a_file_waiting_for_its_turn_lags_by_its_whole_size(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """One file open at a time, paced: the files not opened yet lag by all of their bytes, not
    0, so the lag says how much is left to read."""
    (tmp_path / "in").mkdir()
    sizes = {}
    for name in ("a.txt", "b.txt", "c.txt"):
        data = NUMBERS * 20
        (tmp_path / "in" / name).write_bytes(data)
        sizes[f"in/{name}"] = len(data)
    args = ["--input", "in/*.txt", "--max-open-files", "1", "--max-rate", "2000"]
    worker = _start(running, tmp_path, *args)
    worker.wait_for("checkpoint_not_found")
    deadline = time.monotonic() + 10
    while len(lags := by_label(_scrape(worker), "checkpoint_worker_lag_bytes", "partition")) < 3:
        assert time.monotonic() < deadline, lags
        time.sleep(0.05)
    assert lags["in/b.txt"] == sizes["in/b.txt"]
    assert lags["in/c.txt"] == sizes["in/c.txt"]
    assert 0 < lags["in/a.txt"] <= sizes["in/a.txt"]
    _stop(worker)
