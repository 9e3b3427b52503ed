"""Every promise, end to end: real worker processes, real signals, real files."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.oracle import Expected, expected_of
from tests.processes import WorkerProcess, cli, events_of, unmeasured, worker_env
from tests.strace import strace_prefix

SEED = 20261123


def _numbers(count: int, seed: int = SEED, *, noisy: bool = False) -> bytes:
    """Deterministic input; `noisy` mixes in signs, blanks, CRLF and bad lines."""
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        value = rng.randrange(-(10**6), 10**6)
        if noisy and index % 97 == 13:
            lines.append(rng.choice([b"oops", b"1.5", b" ", b"", b"0x1F", b"\xff\xfe", b"1_000"]))
        elif noisy and index % 89 == 7:
            lines.append(f" +{abs(value)}\t\r".encode())
        else:
            lines.append(str(value).encode())
    return b"\n".join(lines) + b"\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "numbers.txt").write_bytes(_numbers(200_000, noisy=True))
    return tmp_path


def _checkpoint(workdir: Path) -> dict[str, object]:
    loaded = json.loads((workdir / "checkpoint.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _result(workdir: Path) -> dict[str, object]:
    loaded = json.loads((workdir / "result.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _assert_result_is(workdir: Path, expected: Expected) -> None:
    result = _result(workdir)
    assert (result["sum"], result["records"], result["bad_records"], result["offset"]) == (
        expected.sum,
        expected.records,
        expected.bad_records,
        expected.offset,
    )


def _assert_checkpoint_exact(workdir: Path, data: bytes) -> None:
    """The checkpoint's counts are exactly the oracle's for the prefix it says it consumed."""
    saved = _checkpoint(workdir)
    offset = saved["offset"]
    assert isinstance(offset, int)
    assert offset == 0 or data[offset - 1 : offset] == b"\n", "offset not at a line start"
    prefix = expected_of(data[:offset])
    assert (saved["records"], saved["bad_records"], saved["sum"], saved["lines"]) == (
        prefix.records,
        prefix.bad_records,
        prefix.sum,
        prefix.lines,
    )


def test_run_completes_with_the_exact_sum_and_rerun_gives_the_same(workdir: Path) -> None:
    """A run ends with `completed`, result.json holds the oracle's sum, and a rerun repeats it."""
    expected = expected_of((workdir / "numbers.txt").read_bytes())
    first = cli(["run"], workdir)
    assert first.returncode == 0, first.stderr
    events = events_of(first.stdout)
    names = [e["event"] for e in events]
    assert names[0] == "worker_started"
    assert names[-1] == "worker_stopped"
    assert "checkpoint_not_found" in names
    completed = next(e for e in events if e["event"] == "completed")
    assert (completed["sum"], completed["records"], completed["bad_records"]) == (
        expected.sum,
        expected.records,
        expected.bad_records,
    )
    assert any(e["event"] == "checkpoint_saved" and e["reason"] == "completed" for e in events)
    _assert_result_is(workdir, expected)
    assert _checkpoint(workdir)["completed"] is True

    again = cli(["run"], workdir)
    assert again.returncode == 0
    assert any(e["event"] == "checkpoint_loaded" for e in events_of(again.stdout))
    _assert_result_is(workdir, expected)


def test_every_log_line_is_json_with_timestamp_level_and_event(workdir: Path) -> None:
    """Each stdout line is one JSON object with an ISO 8601 UTC timestamp, a level and an event."""
    done = cli(["run"], workdir)
    lines = done.stdout.splitlines()
    assert lines
    for line in lines:
        event = json.loads(line)
        assert event["level"] in {"debug", "info", "warning", "error"}
        assert isinstance(event["event"], str)
        assert event["timestamp"].endswith("Z")
        time.strptime(event["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")
    started = json.loads(lines[0])
    assert {"input", "checkpoint", "pid", "version"} <= started.keys()
    stopped = json.loads(lines[-1])
    assert (stopped["event"], stopped["exit_code"], stopped["reason"]) == (
        "worker_stopped",
        0,
        "completed",
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_saves_a_final_checkpoint_and_the_rerun_resumes_exactly(
    workdir: Path, signum: signal.Signals
) -> None:
    """SIGTERM/SIGINT at a random moment: exit 0, checkpoint_saved reason shutdown, exact resume."""
    data = (workdir / "numbers.txt").read_bytes()
    rng = random.Random(signum)
    for _ in range(3):
        worker = WorkerProcess(["--max-rate", "100000", "--checkpoint-interval", "0.2"], workdir)
        worker.wait_for("worker_started")
        time.sleep(rng.uniform(0.2, 0.6))
        sent = time.monotonic()
        worker.signal(signum)
        assert worker.finish() == 0
        assert time.monotonic() - sent < 5  # the shutdown timeout
        worker.wait_for("shutdown_requested", signal=signum.name)
        final = worker.wait_for("checkpoint_saved", reason="shutdown")
        assert _checkpoint(workdir)["offset"] == final["offset"]
        _assert_checkpoint_exact(workdir, data)
        resumed = WorkerProcess(["--max-rate", "1"], workdir)
        loaded = resumed.wait_for("checkpoint_loaded")
        resumed.signal(signal.SIGTERM)
        assert resumed.finish() == 0
        assert loaded["offset"] == final["offset"]
        assert loaded["sum"] == final["sum"]
    assert cli(["run"], workdir).returncode == 0
    _assert_result_is(workdir, expected_of(data))


def test_sigkill_at_random_instants_never_loses_or_doubles_a_record(workdir: Path) -> None:
    """20 SIGKILLs at random instants: every checkpoint left is exact, and the end sum is too."""
    data = (workdir / "numbers.txt").read_bytes()
    rng = random.Random(7)
    offsets = []
    killed = unmeasured(worker_env())  # a SIGKILL takes the coverage data with it: don't trace
    for _ in range(20):
        args = ["--max-rate", "25000", "--checkpoint-interval", "0.02"]
        worker = WorkerProcess(args, workdir, killed)
        worker.wait_for("worker_started")
        time.sleep(rng.uniform(0.05, 0.4))
        worker.kill()
        assert worker.finish() == -signal.SIGKILL
        if (workdir / "checkpoint.json").exists():
            _assert_checkpoint_exact(workdir, data)
            offsets.append(_checkpoint(workdir)["offset"])
    assert len(set(offsets)) > 5, "kills should land at many different offsets"
    done = cli(["run"], workdir)
    assert done.returncode == 0, done.stdout
    _assert_result_is(workdir, expected_of(data))


def test_resumed_bad_record_line_numbers_count_from_the_start_of_the_file(tmp_path: Path) -> None:
    """After a resume, bad_record events still give line numbers from the start of the file."""
    lines = [str(n).encode() for n in range(1, 30_001)]
    lines[5] = b"bad-early"
    lines[29_000] = b"bad-late"
    (tmp_path / "numbers.txt").write_bytes(b"\n".join(lines) + b"\n")
    worker = WorkerProcess(["--max-rate", "20000", "--checkpoint-interval", "0.1"], tmp_path)
    worker.wait_for("bad_record", line=6)
    worker.wait_for("checkpoint_saved", timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    stopped_at = _checkpoint(tmp_path)["offset"]
    assert isinstance(stopped_at, int)
    assert stopped_at < len(b"\n".join(lines[:29_000]))
    resumed = cli(["run"], tmp_path)
    bad = [e for e in events_of(resumed.stdout) if e["event"] == "bad_record"]
    assert [(e["line"], e["reason"]) for e in bad] == [(29_001, "not_an_integer")]
    assert bad[0]["offset"] == len(b"\n".join(lines[:29_000])) + 1
    assert _result(tmp_path)["bad_records"] == 2


def test_bad_records_are_logged_at_most_100_times_but_counted_exactly(tmp_path: Path) -> None:
    """Skip policy: 250 bad lines give 100 bad_record events and bad_records = 250."""
    lines = [b"x" if n % 2 else b"1" for n in range(500)]
    (tmp_path / "numbers.txt").write_bytes(b"\n".join(lines) + b"\n")
    done = cli(["run"], tmp_path)
    bad = [e for e in events_of(done.stdout) if e["event"] == "bad_record"]
    assert len(bad) == 100
    assert [e["line"] for e in bad] == list(range(2, 202, 2))
    assert (_result(tmp_path)["bad_records"], _result(tmp_path)["records"]) == (250, 250)


def test_the_bad_record_budget_is_one_per_run_over_every_file(tmp_path: Path) -> None:
    """A glob of three files with 80 bad lines each: 100 bad_record events for the whole run
    (not 100 a file), and the count of every bad line exact."""
    (tmp_path / "in").mkdir()
    for index in range(3):
        lines = [b"x" if n % 2 else b"%d" % n for n in range(160)]
        (tmp_path / "in" / f"{index}.txt").write_bytes(b"\n".join(lines) + b"\n")
    done = cli(["run", "--input", "in/*.txt"], tmp_path)
    assert done.returncode == 0, done.stdout
    bad = [e for e in events_of(done.stdout) if e["event"] == "bad_record"]
    assert len(bad) == 100
    assert _result(tmp_path)["bad_records"] == 240


def test_fail_policy_stops_before_the_bad_line_and_names_it(tmp_path: Path) -> None:
    """on_bad_record=fail: exit 1, the error names line 4, the checkpoint stops just before it."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n\n1e3\n5\n")
    done = cli(["run", "--on-bad-record", "fail"], tmp_path)
    assert done.returncode == 1
    errors = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert len(errors) == 1
    assert "line 4" in errors[0]["message"]
    assert "Traceback" not in done.stderr
    saved = _checkpoint(tmp_path)
    assert (saved["offset"], saved["records"], saved["sum"]) == (5, 2, 3)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty", b""),
        ("truncated", b'{"version": 1, "offset": 12, "rec'),
        ("zero_filled", b"\0" * 128),
        (
            "wrong_types",
            b'{"version": 1, "input": "n", "offset": "12", "lines": 1, "records": 1,'
            b' "bad_records": 0, "sum": 1, "identity": null, "completed": false,'
            b' "updated_at": "x"}',
        ),
        ("unknown_version", b'{"version": 99, "offset": 0}'),
        ("not_an_object", b"[1, 2, 3]"),
    ],
)
def test_a_corrupt_checkpoint_is_reported_and_left_untouched(
    workdir: Path, name: str, content: bytes
) -> None:
    """A torn, zero-filled, ill-typed or unknown-version checkpoint: exit 1, file unchanged."""
    (workdir / "checkpoint.json").write_bytes(content)
    done = cli(["run"], workdir)
    assert done.returncode == 1, name
    errors = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert len(errors) == 1
    assert "checkpoint.json" in errors[0]["message"]
    assert "Traceback" not in done.stderr
    assert (workdir / "checkpoint.json").read_bytes() == content
    assert not (workdir / "result.json").exists()


def _stop_midway(workdir: Path) -> int:
    worker = WorkerProcess(["--max-rate", "100000", "--checkpoint-interval", "0.1"], workdir)
    worker.wait_for("checkpoint_saved", reason="timer", offset=lambda offset: offset > 2048)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    offset = _checkpoint(workdir)["offset"]
    assert isinstance(offset, int)
    assert offset > 2048
    return offset


@pytest.mark.parametrize("change", ["same_size_other_content", "truncated_below_offset"])
def test_a_changed_input_fails_or_restarts_by_policy(workdir: Path, change: str) -> None:
    """Input replaced or truncated under a checkpoint: input_changed, exit 1 or restart from 0."""
    offset = _stop_midway(workdir)
    path = workdir / "numbers.txt"
    data = path.read_bytes()
    if change == "same_size_other_content":
        # Only the last KiB before the offset differs: the tail hash must notice.
        spot = offset - 10
        swapped = b"7" if data[spot : spot + 1] != b"7" else b"8"
        if data[spot : spot + 1] in (b"\n", b"-"):
            spot -= 2
        data = data[:spot] + swapped + data[spot + 1 :]
    else:
        data = data[: offset // 2]
        data = data[: data.rindex(b"\n") + 1]
    path.write_bytes(data)
    before = (workdir / "checkpoint.json").read_bytes()

    failed = cli(["run"], workdir)
    assert failed.returncode == 1
    changed = [e for e in events_of(failed.stdout) if e["event"] == "input_changed"]
    assert len(changed) == 1
    assert changed[0]["action"] == "fail"
    assert (workdir / "checkpoint.json").read_bytes() == before

    restarted = cli(["run", "--on-input-change", "restart"], workdir)
    assert restarted.returncode == 0
    events = events_of(restarted.stdout)
    assert any(e["event"] == "input_changed" and e["action"] == "restart" for e in events)
    assert any(e["event"] == "input_changed" and e["level"] == "warning" for e in events)
    _assert_result_is(workdir, expected_of(data))


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b" \t\r\n"], ids=["lf", "crlf", "blanks"])
@pytest.mark.parametrize("when", ["before_the_run", "before_following", "while_following"])
def test_a_last_line_counted_without_its_newline_gets_it_later(
    tmp_path: Path, ending: bytes, when: str
) -> None:
    """A run ends on "2" with no '\\n' and counts it; the end of that line (its '\\n', after
    blanks or a '\\r', as the input rules allow) and more lines come later, before the next run
    or while it follows, the end in two writes: the same line ended, never a line of its own,
    so sum and line numbers stay exact."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n2")
    assert cli(["run"], tmp_path).returncode == 0
    later = b"1\n2" + ending + b"x\n5\n"
    if when == "before_the_run":
        path.write_bytes(later)
        done = cli(["run"], tmp_path)
        assert done.returncode == 0, done.stdout
        events = events_of(done.stdout)
    else:
        if when == "before_following":
            path.write_bytes(later)
        worker = WorkerProcess(["--follow", "--poll-interval", "0.05"], tmp_path)
        worker.wait_for("caught_up")
        if when == "while_following":
            with path.open("ab") as writer:
                writer.write(ending[:-1])  # blanks or a CR, and no newline yet: held
                writer.flush()
                time.sleep(0.5)
                writer.write(later[len(b"1\n2") + len(ending) - 1 :])
        worker.wait_for("caught_up", offset=len(later))
        worker.signal(signal.SIGTERM)
        assert worker.finish() == 0
        events = worker.events
    assert [e["line"] for e in events if e["event"] == "bad_record"] == [3]
    _assert_result_is(tmp_path, expected_of(later))


@pytest.mark.parametrize("when", ["before_the_run", "while_following"])
def test_a_last_line_counted_without_its_newline_that_goes_on_is_an_input_change(
    tmp_path: Path, when: str
) -> None:
    """A run ends on "2" with no '\\n' and counts it; then "3\\n" is appended, before the next
    run or while it follows, so the line is "23": `input_changed` (exit 1, checkpoint
    untouched), never a silent 2 + 3; and under restart the exact sum."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n2")
    assert cli(["run"], tmp_path).returncode == 0
    before = (tmp_path / "checkpoint.json").read_bytes()
    if when == "before_the_run":
        path.write_bytes(b"1\n23\n")
        failed = cli(["run"], tmp_path)
        assert failed.returncode == 1
        events = events_of(failed.stdout)
    else:
        worker = WorkerProcess(["--follow", "--poll-interval", "0.05"], tmp_path)
        worker.wait_for("caught_up")
        with path.open("ab") as writer:
            writer.write(b"3\n")
        assert worker.finish() == 1
        events = worker.events
    changed = [e for e in events if e["event"] == "input_changed"]
    assert [e["action"] for e in changed] == ["fail"]
    assert (tmp_path / "checkpoint.json").read_bytes() == before
    assert cli(["run", "--on-input-change", "restart"], tmp_path).returncode == 0
    _assert_result_is(tmp_path, expected_of(b"1\n23\n"))


def test_a_second_worker_on_the_same_checkpoint_exits_at_once_naming_the_holder(
    workdir: Path,
) -> None:
    """One worker per checkpoint: a second one exits 1 at once with the holder's pid."""
    first = WorkerProcess(["--max-rate", "1000"], workdir)
    first.wait_for("checkpoint_not_found")
    started = time.monotonic()
    second = cli(["run"], workdir)
    assert time.monotonic() - started < 10
    assert second.returncode == 1
    errors = [e for e in events_of(second.stdout) if e["level"] == "error"]
    assert len(errors) == 1
    assert str(first.process.pid) in errors[0]["message"]
    first.signal(signal.SIGTERM)
    assert first.finish() == 0


def test_a_lock_file_removed_under_a_worker_is_made_again_so_a_second_one_is_refused(
    workdir: Path,
) -> None:
    """`rm checkpoint.json.lock` while a worker runs: within a heartbeat the lock file is back,
    locked by the same worker, and a second worker still exits 1 naming it."""
    first = WorkerProcess(["--max-rate", "1000"], workdir)
    first.wait_for("checkpoint_not_found")
    lock = workdir / "checkpoint.json.lock"
    lock.unlink()
    first.wait_for("lock_file_remade", timeout=10)
    assert lock.read_text().strip() == str(first.process.pid)
    second = cli(["run"], workdir)
    assert second.returncode == 1
    assert str(first.process.pid) in second.stdout
    first.signal(signal.SIGTERM)
    assert first.finish() == 0
    assert first.wait_for("checkpoint_saved", reason="shutdown")


def test_a_worker_whose_lock_another_took_stops_without_writing_over_its_checkpoint(
    workdir: Path,
) -> None:
    """The lock file removed and another process locking a new one before the worker's next
    heartbeat: the worker stops with one error line, exit 1, and no final checkpoint."""
    first = WorkerProcess(["--max-rate", "1000", "--checkpoint-interval", "0.1"], workdir)
    first.wait_for("checkpoint_saved", reason="timer")
    lock = workdir / "checkpoint.json.lock"
    lock.unlink()
    with lock.open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a second worker would
        assert first.finish() == 1
    [error] = [event for event in first.events if event["level"] == "error"]
    assert "was replaced" in error["message"]
    assert first.named("checkpoint_saved", reason="shutdown") == []
    assert "Traceback" not in first.stderr


def test_a_missing_input_is_one_clear_error(tmp_path: Path) -> None:
    """No numbers.txt: exit 1 with one error line naming it, no traceback, no checkpoint."""
    done = cli(["run"], tmp_path)
    assert done.returncode == 1
    errors = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert len(errors) == 1
    assert "numbers.txt" in errors[0]["message"]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "checkpoint.json").exists()


def test_an_unwritable_checkpoint_location_is_one_clear_error(workdir: Path) -> None:
    """A checkpoint whose directory cannot be written: exit 1, one error line, no traceback."""
    blocker = workdir / "not-a-directory"
    blocker.write_text("a file where a directory should be\n")
    done = cli(["run", "--checkpoint", str(blocker / "checkpoint.json")], workdir)
    assert done.returncode == 1
    errors = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert len(errors) == 1
    assert "not-a-directory" in errors[0]["message"]
    assert "Traceback" not in done.stderr


def test_a_checkpoint_write_failure_mid_run_keeps_the_previous_checkpoint(workdir: Path) -> None:
    """When the checkpoint cannot be replaced (here: it became a directory), exit 1 and say so."""
    worker = WorkerProcess(["--max-rate", "50000", "--checkpoint-interval", "0.1"], workdir)
    worker.wait_for("checkpoint_saved", reason="timer")
    checkpoint = workdir / "checkpoint.json"
    checkpoint.unlink()
    checkpoint.mkdir()
    assert worker.finish(timeout=20) == 1
    errors = worker.named("fatal_error")
    assert len(errors) == 1
    assert "checkpoint.json" in errors[0]["message"]
    assert "Traceback" not in worker.stderr


def test_follow_mode_counts_appended_lines_once_even_split_across_writes(tmp_path: Path) -> None:
    """Following: a number written in two pieces is one record; caught_up then SIGTERM exits 0."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n2\n")
    worker = WorkerProcess(["--follow", "--poll-interval", "0.05"], tmp_path)
    worker.wait_for("caught_up", records=2, sum=3)
    with path.open("ab") as handle:
        for piece in (b"12", b"34\n-", b"5", b"\n7"):
            handle.write(piece)
            handle.flush()
            time.sleep(0.2)
    worker.wait_for("caught_up", records=4, sum=3 + 1234 - 5)
    assert _result(tmp_path)["sum"] == 1232
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    assert final["offset"] == len(b"1\n2\n1234\n-5\n")  # the unfinished "7" stays unconsumed
    assert not worker.named("completed")

    with path.open("ab") as handle:
        handle.write(b"\n")
    done = cli(["run"], tmp_path)
    assert done.returncode == 0
    assert _result(tmp_path)["sum"] == 1232 + 7


@pytest.mark.parametrize(
    ("change", "total"),
    [
        pytest.param(lambda h: (h.truncate(2), h.seek(2), h.write(b"30\n")), 31, id="cut-then-on"),
        pytest.param(lambda h: (h.seek(2), h.write(b"9\n")), 10, id="written-over"),
        pytest.param(
            lambda h: (h.truncate(2), h.seek(2), h.write(b"5\n")), 6, id="cut-to-its-start"
        ),
    ],
)
def test_following_an_unfinished_line_written_over_or_cut_reads_it_again(
    tmp_path: Path, change: Callable[[BinaryIO], object], total: int
) -> None:
    """`1\n2` followed, the unfinished `2` held: then cut, or written over in place, before its
    `\n` came. Nothing of that line was counted, so nothing changed: the worker reads it
    again as it is now (it summed the stale `2` with what followed, 21 for 31)."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n2")
    args = ["--follow", "--poll-interval", "0.05", "--checkpoint-interval", "0.1"]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("checkpoint_saved", offset=2, sum=1)  # the `2` is held, not counted
    with path.open("r+b") as handle:
        change(handle)
    worker.wait_for("caught_up", records=2, sum=total)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert not worker.named("input_changed")


def test_healthcheck_is_healthy_only_while_a_worker_runs(workdir: Path) -> None:
    """healthcheck exits 0 beside a live worker and 1 once it has stopped."""
    worker = WorkerProcess(["--max-rate", "1000"], workdir)
    worker.wait_for("checkpoint_not_found")
    time.sleep(0.3)
    assert cli(["healthcheck"], workdir).returncode == 0
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    stopped = cli(["healthcheck"], workdir)
    assert stopped.returncode == 1
    assert "unhealthy" in stopped.stdout


def test_reset_refuses_while_a_worker_runs_then_starts_over(workdir: Path) -> None:
    """reset exits 1 while a worker holds the lock, and afterwards removes checkpoint and result."""
    assert cli(["run"], workdir).returncode == 0
    worker = WorkerProcess(["--follow"], workdir)
    worker.wait_for("caught_up")
    refused = cli(["reset"], workdir)
    assert refused.returncode == 1
    assert str(worker.process.pid) in refused.stdout
    assert (workdir / "checkpoint.json").exists()
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0

    assert cli(["reset"], workdir).returncode == 0
    assert not (workdir / "checkpoint.json").exists()
    assert not (workdir / "result.json").exists()
    rerun = cli(["run"], workdir)
    assert any(e["event"] == "checkpoint_not_found" for e in events_of(rerun.stdout))


def test_a_killed_generate_leaves_a_temporary_file_the_next_one_removes(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves the temporary file (nothing can remove it then); the next
    `generate` of the same output removes it, and the output is whole."""
    command = [sys.executable, "-m", "service", "generate", "--count", "5000000", "--seed", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=worker_env(), stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not any(tmp_path.glob(".numbers.txt.*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.communicate(timeout=30)
    assert any(tmp_path.glob(".numbers.txt.*"))
    assert cli(["generate", "--count", "1000", "--seed", "1"], tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numbers.txt"]
    assert (tmp_path / "numbers.txt").read_bytes().count(b"\n") == 1000


def test_two_generates_of_one_file_at_once_both_finish_whole(tmp_path: Path) -> None:
    """A second `generate --if-missing` started while the first is still writing never takes
    the first one's temporary file for a crashed write's: both exit 0, the file is whole."""
    command = [sys.executable, "-m", "service", "generate", "--count", "3000000", "--seed", "1"]
    first = subprocess.Popen(
        [*command, "--if-missing"], cwd=tmp_path, env=worker_env(), stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not any(tmp_path.glob(".numbers.txt.*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    second = cli(["generate", "--count", "3000000", "--seed", "1", "--if-missing"], tmp_path)
    out, _ = first.communicate(timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), out.decode() + second.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numbers.txt"]
    assert (tmp_path / "numbers.txt").read_bytes().count(b"\n") == 3_000_000


def test_a_worker_never_removes_the_temporary_file_of_a_neighbours_checkpoint(
    tmp_path: Path,
) -> None:
    """`cp` and `cp.b` in one directory: a worker on `cp` leaves `cp.b`'s temporary file, the
    shape of a save in progress, alone."""
    (tmp_path / "numbers.txt").write_text("1\n2\n")
    neighbours = tmp_path / ".cp.b.abcd_123.tmp"
    neighbours.write_text("a save in progress\n")
    own = tmp_path / ".cp.k3j_9x0q.tmp"
    own.write_text("a crashed save\n")
    ran = cli(["run", "--checkpoint", "cp", "--result", "r.json"], tmp_path)
    assert ran.returncode == 0, ran.stdout
    assert neighbours.exists()
    assert not own.exists()


def test_reset_removes_nothing_when_one_of_its_files_is_a_directory(workdir: Path) -> None:
    """`reset --result DIR`: one line and exit 1 before anything is removed, the checkpoint
    kept, rather than a checkpoint gone and then an error."""
    assert cli(["run"], workdir).returncode == 0
    (workdir / "elsewhere").mkdir()
    refused = cli(["reset", "--result", "elsewhere"], workdir)
    assert refused.returncode == 1
    assert "nothing removed" in refused.stdout
    assert (workdir / "checkpoint.json").exists()
    assert (workdir / "elsewhere").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_reset_removes_nothing_when_the_result_cannot_be_removed(workdir: Path) -> None:
    """A result on a read-only mount: one line and exit 1 before anything is removed; the
    checkpoint is kept (removed first, the run would start over from nothing)."""
    mount = workdir / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        assert cli(["run", "--result", "ro/result.json"], workdir).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        checkpoint = (workdir / "checkpoint.json").read_bytes()
        refused = cli(["reset", "--result", "ro/result.json"], workdir)
        assert refused.returncode == 1
        assert "ro/result.json: its directory is not writable; nothing removed" in refused.stdout
        assert (workdir / "checkpoint.json").read_bytes() == checkpoint
        assert (mount / "result.json").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_generate_is_reproducible_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """Same seed, same file; no overwrite without --force; --if-missing is a no-op."""
    assert cli(["generate", "--count", "1000", "--seed", "5"], tmp_path).returncode == 0
    first = (tmp_path / "numbers.txt").read_bytes()
    assert first.count(b"\n") == 1000
    assert all(line.isdigit() for line in first.splitlines())
    refused = cli(["generate", "--count", "1000", "--seed", "6"], tmp_path)
    assert refused.returncode == 1
    assert (tmp_path / "numbers.txt").read_bytes() == first
    assert cli(["generate", "--if-missing", "--seed", "6"], tmp_path).returncode == 0
    assert (tmp_path / "numbers.txt").read_bytes() == first
    other = tmp_path / "other.txt"
    made = cli(["generate", "--count", "1000", "--seed", "5", "--output", str(other)], tmp_path)
    assert made.returncode == 0
    assert other.read_bytes() == first
    forced = cli(["generate", "--count", "10", "--seed", "6", "--force"], tmp_path)
    assert forced.returncode == 0
    assert (tmp_path / "numbers.txt").read_bytes().count(b"\n") == 10
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_generate_to_a_name_the_file_system_refuses_is_one_line(tmp_path: Path) -> None:
    """A directory on the way with a name longer than the file system takes: one error line,
    exit 1, no traceback, nothing written. An empty name, or one too long for the file's
    temporary twin, is a usage error, and a directory is no file to write or to find there."""
    for extra in ([], ["--if-missing"]):
        output = "b" * 300 + "/x.txt"
        done = cli(["generate", "--count", "1", "--output", output, *extra], tmp_path)
        assert done.returncode == 1
        assert "Traceback" not in done.stdout + done.stderr
        (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
        assert "File name too long" in error["message"]
    for output, named in [("", "expected a path"), ("a" * 256, "expected a file name of at most")]:
        refused = cli(["generate", "--count", "1", "--output", output], tmp_path)
        assert refused.returncode == 2
        assert f"argument --output: {named}" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1
    assert os.listdir(tmp_path) == []
    (tmp_path / "folder").mkdir()
    for extra in ([], ["--if-missing"], ["--force"]):
        done = cli(["generate", "--count", "1", "--output", "folder", *extra], tmp_path)
        assert done.returncode == 1
        (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
        assert "not a regular file" in error["message"]
    assert os.listdir(tmp_path / "folder") == []


def test_status_reports_progress_for_people_and_as_json(workdir: Path) -> None:
    """status --json gives offset, records, bad_records, sum, input size, percent, completed."""
    before = cli(["status", "--json"], workdir)
    assert before.returncode == 0
    assert json.loads(before.stdout)["exists"] is False
    _stop_midway(workdir)
    report = json.loads(cli(["status", "--json"], workdir).stdout)
    saved = _checkpoint(workdir)
    size = (workdir / "numbers.txt").stat().st_size
    assert (report["offset"], report["records"], report["sum"]) == (
        saved["offset"],
        saved["records"],
        saved["sum"],
    )
    assert report["input_size"] == size
    assert report["percent"] == pytest.approx(100 * report["offset"] / size, abs=0.01)
    assert report["completed"] is False
    assert report["updated_at"] == saved["updated_at"]
    text = cli(["status"], workdir).stdout
    assert "percent" in text
    assert f"{report['records']:,}" in text


def test_status_is_not_completed_once_the_input_has_grown_past_the_run(tmp_path: Path) -> None:
    """A completed run, then more lines: `status` says 50% and not completed (it said
    completed beside 0%), and completed again once a run has read them."""
    numbers = tmp_path / "numbers.txt"
    numbers.write_bytes(b"1\n2\n")
    assert cli(["run"], tmp_path).returncode == 0
    assert json.loads(cli(["status", "--json"], tmp_path).stdout)["completed"] is True
    numbers.write_bytes(b"1\n2\n3\n4\n")
    report = json.loads(cli(["status", "--json"], tmp_path).stdout)
    assert (report["percent"], report["completed"]) == (50.0, False)
    assert [f["state"] for f in report["files"]] == ["reading"]
    assert cli(["run"], tmp_path).returncode == 0
    assert json.loads(cli(["status", "--json"], tmp_path).stdout)["completed"] is True


@pytest.mark.parametrize("change", ["truncated", "same size, other bytes"])
def test_status_says_when_the_input_no_longer_holds_what_was_consumed(
    workdir: Path, change: str
) -> None:
    """An input cut below the checkpoint's offset, or rewritten in its consumed prefix: status
    names it as changed and gives no percent, instead of one past 100 or a wrong one."""
    path = workdir / "numbers.txt"
    assert cli(["run"], workdir).returncode == 0
    data = path.read_bytes()
    if change == "truncated":
        path.write_bytes(data[:1000])
    else:
        path.write_bytes((b"8" if data[:1] == b"9" else b"9") + data[1:])
    report = json.loads(cli(["status", "--json"], workdir).stdout)
    assert report["percent"] is None
    assert report["input_changed"] == ["numbers.txt"]
    assert [entry["state"] for entry in report["files"]] == ["changed"]
    text = cli(["status"], workdir).stdout
    assert "changed     numbers.txt" in text
    assert "%" not in text


def test_status_says_when_the_input_is_no_longer_a_regular_file(workdir: Path) -> None:
    """A directory where the input was (smaller than a directory's size, so only a look at
    what it is can tell): status says so, with no size or percent, and no traceback; `run`
    refuses it with one line."""
    path = workdir / "numbers.txt"
    path.write_bytes(b"1\n2\n")
    assert cli(["run"], workdir).returncode == 0
    path.unlink()
    path.mkdir()
    shown = cli(["status", "--json"], workdir)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report["input_size"], report["percent"], report["files"]) == (None, None, [])
    text = cli(["status"], workdir).stdout
    assert "input       numbers.txt (not a regular file)" in text
    refused = cli(["run"], workdir)
    assert refused.returncode == 1
    assert "not a regular file" in refused.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT])
def test_a_stopped_generate_leaves_no_partial_file(tmp_path: Path, signum: int) -> None:
    """`generate` stopped mid-write by a signal: exit 128 + n, no output file and no temporary
    file left behind."""
    command = [sys.executable, "-m", "service", "generate", "--count", "5000000", "--seed", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=worker_env(), stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not any(tmp_path.glob(".numbers.txt.*")) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the temporary file exists: the write is under way
    process.send_signal(signum)
    process.communicate(timeout=30)
    assert process.returncode == 128 + signum
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_settings_come_from_flag_environment_and_config_file(workdir: Path) -> None:
    """Precedence flag > environment > file: the file names the result, env and flag override."""
    (workdir / "worker.toml").write_text('result = "from-file.json"\ncheckpoint = "file.ckpt"\n')
    env = worker_env(WORKER_CHECKPOINT="env.ckpt")
    done = cli(["run", "--config", "worker.toml", "--result", "from-flag.json"], workdir, env)
    assert done.returncode == 0
    assert (workdir / "from-flag.json").exists()
    assert (workdir / "env.ckpt").exists()
    assert not (workdir / "from-file.json").exists()
    assert not (workdir / "file.ckpt").exists()

    (workdir / "bad.toml").write_text("checkpoint_intervall = 2.0\n")
    bad = cli(["run", "--config", "bad.toml"], workdir)
    assert bad.returncode == 2
    assert "checkpoint_intervall" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_second_signal_during_shutdown_exits_at_once(workdir: Path) -> None:
    """SIGTERM then SIGINT while the final checkpoint is written: exit 130, checkpoint whole."""
    data = (workdir / "numbers.txt").read_bytes()
    for _ in range(5):
        # A timer save every 0.1 s: each life stops after a few thousand lines, so five lives
        # stay far from the end (on a finished input a worker exits before the signals come).
        worker = WorkerProcess(["--max-rate", "100000", "--checkpoint-interval", "0.1"], workdir)
        worker.wait_for("checkpoint_saved", reason="timer")
        worker.signal(signal.SIGTERM)
        worker.wait_for("shutdown_requested")
        worker.signal(signal.SIGINT)
        code = worker.finish()
        # Either the second signal beat the final checkpoint (130), or it came after it (0).
        assert code in (0, 128 + signal.SIGINT)
        last = worker.events[-1]  # whichever it was, the last line says so
        assert (last["event"], last["exit_code"]) == ("worker_stopped", code)
        _assert_checkpoint_exact(workdir, data)


def test_two_signals_at_once_still_say_the_first_was_a_stop(workdir: Path) -> None:
    """SIGTERM and SIGINT sent together: the second may come before the loop took the first in;
    the log says all the same that a stop was requested, then how the worker stopped."""
    data = (workdir / "numbers.txt").read_bytes()
    for _ in range(5):
        worker = WorkerProcess(["--max-rate", "100000", "--checkpoint-interval", "0.1"], workdir)
        worker.wait_for("checkpoint_saved", reason="timer")
        worker.signal(signal.SIGTERM)
        worker.signal(signal.SIGINT)
        code = worker.finish()
        assert code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM)
        requested = worker.named("shutdown_requested")
        assert [e["signal"] in ("SIGTERM", "SIGINT") for e in requested] == [True]
        last = worker.events[-1]
        assert (last["event"], last["exit_code"]) == ("worker_stopped", code)
        _assert_checkpoint_exact(workdir, data)


def test_a_shutdown_past_its_timeout_ends_with_worker_stopped(workdir: Path) -> None:
    """Every fsync stalled 1 s and shutdown_timeout 0.3 s: SIGTERM ends the process with exit 1
    within about the timeout, its last lines the fatal error and `worker_stopped`."""
    data = (workdir / "numbers.txt").read_bytes()
    stalled = strace_prefix("/dev/null", "fsync", "fsync:delay_enter=1000000")
    args = ["--max-rate", "100000", "--checkpoint-interval", "0.5", "--shutdown-timeout", "0.3"]
    worker = WorkerProcess(args, workdir, prefix=stalled)
    worker.wait_for("checkpoint_saved", reason="timer", timeout=30)
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 1
    assert time.monotonic() - sent < 3
    fatal, stopped = worker.events[-2:]
    assert "shutdown_timeout" in fatal["message"]
    assert (stopped["event"], stopped["exit_code"]) == ("worker_stopped", 1)
    assert stopped["reason"] == "shutdown_timeout"
    _assert_checkpoint_exact(workdir, data)


def test_time_stopped_mid_shutdown_does_not_count_against_its_timeout(workdir: Path) -> None:
    """SIGTERM, then the process stopped (SIGSTOP, as `docker pause` does) for twice its
    shutdown_timeout while its final save waits in fsync: once it runs again, it saves and
    exits 0. The watchdog counts the time it ran, not the time it was stopped (it ended it)."""
    data = (workdir / "numbers.txt").read_bytes()
    stalled = strace_prefix("/dev/null", "fsync", "fsync:delay_enter=400000")
    args = ["--max-rate", "100000", "--checkpoint-interval", "60", "--shutdown-timeout", "1.5"]
    worker = WorkerProcess(args, workdir, prefix=stalled)
    worker.wait_for("checkpoint_not_found", timeout=30)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    worker.wait_for("shutdown_requested")
    worker.signal(signal.SIGSTOP)
    time.sleep(3)
    worker.signal(signal.SIGCONT)
    assert worker.finish() == 0
    saved = worker.wait_for("checkpoint_saved", reason="shutdown")
    assert saved["offset"] > 0
    _assert_checkpoint_exact(workdir, data)


def test_follow_mode_notices_an_in_place_rewrite_of_consumed_data(tmp_path: Path) -> None:
    """Following: rewriting the same file with other, longer content is input_changed."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(_numbers(1000, seed=1))
    worker = WorkerProcess(["--follow", "--poll-interval", "0.05"], tmp_path)
    worker.wait_for("caught_up")
    with path.open("r+b") as handle:  # same inode, so only the content can tell
        handle.truncate(0)
        handle.write(_numbers(3000, seed=2))
    assert worker.finish() == 1
    changed = worker.wait_for("input_changed")
    assert (changed["reason"], changed["action"]) == ("content_changed", "fail")
    assert len([e for e in worker.events if e["level"] == "error"]) == 1


@pytest.mark.parametrize("glob", [False, True], ids=["plain path", "glob"])
def test_follow_mode_notices_a_same_size_rewrite_in_place(tmp_path: Path, glob: bool) -> None:
    """Following: consumed lines overwritten in place by others of the same length, the size
    unchanged, are input_changed too: the inode's change time says it was written to."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "numbers.txt"
    path.write_bytes(b"1\n" * 1000)
    source = ["--input", "in/*.txt" if glob else "in/numbers.txt"]
    worker = WorkerProcess([*source, "--follow", "--poll-interval", "0.05"], tmp_path)
    worker.wait_for("caught_up", sum=1000)
    with path.open("r+b") as handle:  # same inode, same size: only the content can tell
        handle.write(b"9\n" * 10)
    assert worker.finish() == 1
    changed = worker.wait_for("input_changed")
    assert (changed["reason"], changed["action"]) == ("content_changed", "fail")
    assert len([e for e in worker.events if e["level"] == "error"]) == 1


def test_an_input_rewritten_past_the_offset_while_stopped_is_said_to_differ(
    tmp_path: Path,
) -> None:
    """Rewritten while stopped with other, longer bytes that run through the offset without a
    newline: the message says the consumed bytes differ, not that a last line went on."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n" * 500)
    assert cli(["run"], tmp_path).returncode == 0
    path.write_bytes(b"2" * 1500 + b"\n")
    done = cli(["run"], tmp_path)
    assert done.returncode == 1
    changed = next(e for e in events_of(done.stdout) if e["event"] == "input_changed")
    assert "differs from what the checkpoint consumed (first 1000 bytes)" in changed["message"]


def test_follow_restart_survives_a_deleted_input_and_stops_gracefully(tmp_path: Path) -> None:
    """Following under restart: a deleted input is waited for; SIGTERM still exits 0 cleanly."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"1\n2\n")
    args = ["--follow", "--on-input-change", "restart", "--poll-interval", "0.05"]
    worker = WorkerProcess([*args, "--checkpoint-interval", "0.05"], tmp_path)
    worker.wait_for("caught_up", sum=3)
    path.unlink()
    worker.wait_for("input_changed", reason="deleted", action="restart")
    time.sleep(0.3)  # timer ticks while the input is missing
    path.write_bytes(b"40\n")
    worker.wait_for("caught_up", sum=40)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert "Traceback" not in worker.stderr
    assert _checkpoint(tmp_path)["sum"] == 40


def test_the_progress_rate_counts_what_this_run_read_even_when_totals_fall(
    tmp_path: Path,
) -> None:
    """Following under restart, a rewritten input sets its totals back to nothing: the next
    `progress` line's rate is what this process read per second, never negative."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(_numbers(5000, seed=1))
    args = ["--follow", "--on-input-change", "restart", "--poll-interval", "0.05"]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("progress", records=5000)  # the rate's last reading: 5000 records
    path.write_bytes(b"7\n")  # same inode, fewer lines
    worker.wait_for("input_changed", action="restart")
    worker.wait_for("caught_up", records=1)
    progress = worker.wait_for("progress", timeout=30, records=1)
    assert progress["rate"] >= 0
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0


def test_an_unreadable_input_is_one_error_line_without_traceback(tmp_path: Path) -> None:
    """A read error on the input (EIO here): exit 1, one error line, no traceback."""
    done = cli(["run", "--input", "/proc/self/mem"], tmp_path)
    assert done.returncode == 1
    events = events_of(done.stdout)
    errors = [e for e in events if e["level"] == "error"]
    assert len(errors) == 1
    assert "/proc/self/mem" in errors[0]["message"]
    assert events[-1]["event"] == "worker_stopped"
    assert "Traceback" not in done.stderr
