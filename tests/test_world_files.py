"""The file system around the worker, end to end: links, the lock, truncation, umask, loops."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.storage.atomic import LONGEST_WRITTEN_NAME
from tests.oracle import expected_of, expected_of_files
from tests.processes import WorkerProcess, cli, cli_writing_to, events_of, worker_env
from tests.strace import strace_prefix

FAST = ["--poll-interval", "0.05", "--checkpoint-interval", "0.05"]


def _numbers(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(b"%d\n" % rng.randrange(-(10**6), 10**6) for _ in range(count))


def _json(path: Path) -> dict[str, object]:
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a finished run, which printed no traceback."""
    (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert "Traceback" not in done.stderr + done.stdout
    message = error["message"]
    assert isinstance(message, str)
    return message


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link"])
def test_a_lock_that_is_a_link_is_refused_and_never_written(tmp_path: Path, kind: str) -> None:
    """A lock file planted as a link: exit 1, one line, and the file it leads to is unchanged."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    victim = tmp_path / "precious.txt"
    lock = tmp_path / "checkpoint.json.lock"
    if kind == "hard link":
        victim.write_bytes(b"keep me\n")
        os.link(victim, lock)
    else:
        if kind == "symlink":
            victim.write_bytes(b"keep me\n")
        lock.symlink_to(victim)
    done = cli(["run"], tmp_path)
    assert done.returncode == 1
    assert str(lock) in _one_error(done) or "checkpoint.json.lock" in _one_error(done)
    if kind == "dangling symlink":
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"keep me\n"
    assert not (tmp_path / "checkpoint.json").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--result", "numbers.txt"], "result and input"),
        (["--result", "linked/numbers.txt"], "result and input"),
        (["--result", "checkpoint.json"], "checkpoint and result"),
        (["--result", "checkpoint.json.lock"], "result and the checkpoint's lock"),
        (["--checkpoint", "numbers.txt"], "checkpoint and input"),
    ],
)
@pytest.mark.parametrize("command", ["run", "reset"])
def test_one_path_for_two_of_the_workers_files_is_exit_2(
    tmp_path: Path, command: str, args: list[str], named: str
) -> None:
    """A result, checkpoint or lock that is the input or one another (by name or through a
    linked directory): one line naming both, exit 2, and the input and checkpoint unchanged;
    `reset` removes neither."""
    data = _numbers(1000, 5)
    (tmp_path / "numbers.txt").write_bytes(data)
    (tmp_path / "linked").symlink_to(tmp_path)
    assert cli(["run", "--result", "first.json"], tmp_path).returncode == 0
    checkpoint = (tmp_path / "checkpoint.json").read_bytes()
    done = cli([command, *args], tmp_path)
    assert done.returncode == 2
    assert named in _one_error(done)
    assert (tmp_path / "numbers.txt").read_bytes() == data
    assert (tmp_path / "checkpoint.json").read_bytes() == checkpoint


def test_a_link_to_a_checkpoint_in_use_is_refused_like_the_checkpoint(tmp_path: Path) -> None:
    """A second worker given a symbolic link to a running worker's checkpoint takes the same
    lock: exit 1 at once naming the holder, and the link is left a link."""
    (tmp_path / "numbers.txt").write_bytes(_numbers(200_000, 6))
    first = WorkerProcess(["--follow", "--max-rate", "5000"], tmp_path)
    first.wait_for("checkpoint_not_found")
    (tmp_path / "link.json").symlink_to("checkpoint.json")
    second = cli(["run", "--checkpoint", "link.json", "--result", "r2.json"], tmp_path)
    assert second.returncode == 1
    assert str(first.process.pid) in _one_error(second)
    assert (tmp_path / "link.json").is_symlink()
    first.signal(signal.SIGTERM)
    assert first.finish() == 0


@pytest.mark.parametrize("setting", ["--result", "--checkpoint"])
@pytest.mark.parametrize("kind", ["character device", "fifo", "directory"])
def test_a_result_or_checkpoint_that_is_no_regular_file_is_refused_and_left_as_it_is(
    tmp_path: Path, setting: str, kind: str
) -> None:
    """`--result /dev/null`, a FIFO or a directory in the place of a file every save replaces:
    one line, exit 1 (as for any checkpoint that cannot be written), before anything is
    written, and the thing is still what it was (a save renaming a regular file over
    /dev/null would break the whole machine)."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    target = tmp_path / "target"
    if kind == "character device":
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # another /dev/null
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    before = os.lstat(target)
    done = cli(["run", setting, "target"], tmp_path, timeout=30)
    assert done.returncode == 1
    assert "target: not a regular file" in _one_error(done)
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not (tmp_path / "target.lock").exists()
    assert cli(["generate", "--force", "--output", "target", "--count", "3"], tmp_path).returncode
    assert os.lstat(target).st_mode == before.st_mode
    # `reset` with the same setting (say WORKER_RESULT=/dev/null) removes it no more than `run`
    # wrote it, through a link either.
    (tmp_path / "link").symlink_to(target)
    for named in ("target", "link"):
        refused = cli(["reset", setting, named], tmp_path, timeout=30)
        assert refused.returncode == 1
        assert "nothing removed" in _one_error(refused)
        after = os.lstat(target)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not (tmp_path / "target.lock").exists()


@pytest.mark.parametrize("command", ["run", "reset"])
@pytest.mark.parametrize(
    "named", ["--result data/b.txt", "--checkpoint data/b.txt", "--checkpoint state.json"]
)
def test_a_file_of_a_glob_named_as_the_result_or_checkpoint_is_exit_2(
    tmp_path: Path, command: str, named: str
) -> None:
    """The worker's own files are never read, so a file of numbers that a glob matches, named
    as the result or the checkpoint (or reached through a link so named), would be written
    over by `run` or deleted by `reset`: exit 2 naming it, and every file as it was."""
    (tmp_path / "data").mkdir()
    files = {"a.txt": _numbers(100, 1), "b.txt": _numbers(100, 2)}
    for name, data in files.items():
        (tmp_path / "data" / name).write_bytes(data)
    (tmp_path / "state.json").symlink_to("data/b.txt")
    setting, path = named.split()
    done = cli([command, "--input", "data/*.txt", setting, path], tmp_path)
    assert done.returncode == 2
    assert f"{path} is a file of the input (data/*.txt)" in _one_error(done)
    for name, data in files.items():
        assert (tmp_path / "data" / name).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a.txt", "b.txt"]


def test_the_results_and_checkpoints_of_a_glob_inside_its_own_directory_still_work(
    tmp_path: Path,
) -> None:
    """Beside the refusal above: a checkpoint and result that the glob matches by name are the
    worker's own files, never read, run after run, and `reset` removes them."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_bytes(_numbers(100, 1))
    own = ["--input", "data/*", "--checkpoint", "data/c.txt", "--result", "data/r.txt"]
    for _ in range(2):
        assert cli(["run", *own], tmp_path).returncode == 0
    result = json.loads((tmp_path / "data" / "r.txt").read_text())
    assert result["sum"] == expected_of(_numbers(100, 1)).sum
    assert cli(["reset", *own], tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["a.txt", "c.txt.lock"]


@pytest.mark.parametrize(
    ("config_name", "key", "value", "named"),
    [
        ("worker.toml", "result", "worker.toml", "result and the config file"),
        ("worker.toml", "checkpoint", "./worker.toml", "checkpoint and the config file"),
        ("state.lock", "checkpoint", "state", "the checkpoint's lock and the config file"),
    ],
)
def test_the_config_file_is_never_written_as_one_of_the_workers_files(
    tmp_path: Path, config_name: str, key: str, value: str, named: str
) -> None:
    """`result = "worker.toml"` in worker.toml itself: exit 2 before anything is written, the
    config file as it was (a run would replace it with JSON, and the next fail to read it)."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    config = tmp_path / config_name
    text = f'{key} = "{value}"\n'.encode()
    config.write_bytes(text)
    for command in ("run", "reset", "status"):
        done = cli([command, "--config", config_name], tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert named in done.stderr
        assert config.read_bytes() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["numbers.txt", config_name])


def test_a_symlinked_checkpoint_is_written_through_and_keeps_one_lock(tmp_path: Path) -> None:
    """A checkpoint given as a symbolic link: every save replaces the file it leads to, the link
    stays a link, so a worker given the file itself takes the same lock; `reset` removes the
    file, and the next run through the link starts over."""
    (tmp_path / "real").mkdir()
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    real = ["--checkpoint", "real/cp.json", "--result", "real/r.json"]
    assert cli(["run", *real], tmp_path).returncode == 0
    (tmp_path / "link.json").symlink_to("real/cp.json")
    with (tmp_path / "numbers.txt").open("ab") as grown:
        grown.write(b"3\n")
    linked = ["--checkpoint", "link.json", "--result", "real/r.json"]
    assert cli(["run", *linked], tmp_path).returncode == 0
    assert (tmp_path / "link.json").is_symlink()
    assert _json(tmp_path / "real" / "r.json")["sum"] == 6
    assert _json(tmp_path / "real" / "cp.json")["sum"] == 6
    first = WorkerProcess(["--follow", *linked], tmp_path)
    first.wait_for("checkpoint_loaded")
    second = cli(["run", "--follow", *real], tmp_path)
    assert second.returncode == 1
    assert str(first.process.pid) in _one_error(second)
    first.signal(signal.SIGTERM)
    assert first.finish() == 0
    assert cli(["reset", *linked], tmp_path).returncode == 0
    assert (tmp_path / "link.json").is_symlink()
    assert not (tmp_path / "real" / "cp.json").exists()
    assert cli(["run", *linked], tmp_path).returncode == 0
    assert _json(tmp_path / "real" / "cp.json")["sum"] == 6


def test_a_lock_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO in the lock's place is refused with one line, never waited on."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n")
    os.mkfifo(tmp_path / "checkpoint.json.lock")
    done = cli(["run"], tmp_path, timeout=30)
    assert done.returncode == 1
    assert "not a regular file" in _one_error(done)


@pytest.mark.parametrize("reached", ["input through the link", "checkpoint through the link"])
def test_own_files_are_never_read_whatever_path_reaches_them(tmp_path: Path, reached: str) -> None:
    """A data directory reached through a symlink: `link/*` never reads the lock or checkpoint."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    parts = [_numbers(1000, seed) for seed in range(3)]
    for index, data in enumerate(parts):
        (real / f"part-{index}.txt").write_bytes(data)
    inputs, state = ("link", "real") if reached == "input through the link" else ("real", "link")
    args = ["run", "--input", f"{inputs}/*", "--on-bad-record", "fail"]
    args += ["--checkpoint", f"{state}/checkpoint.json", "--result", f"{state}/result.json"]
    (real / ".checkpoint.json.leftover.tmp").write_bytes(b"12345\n")  # a crashed save's temp
    for _ in range(2):  # the second run sees the checkpoint, result and lock there
        done = cli(args, tmp_path)
        assert done.returncode == 0, done.stdout
        result = _json(real / "result.json")
        expected = expected_of_files(parts)
        assert (result["sum"], result["records"]) == (expected.sum, expected.records)
        assert len(result["files"]) == 3  # type: ignore[arg-type]


def test_a_plain_input_that_the_output_is_redirected_to_is_exit_2(tmp_path: Path) -> None:
    """`run --input log.txt >> log.txt`: each log line would be read back as a bad record, and
    each of those logged, for as long as it runs. One line and exit 2, nothing read."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"1\n2\n")
    with log.open("ab") as output:
        args = ["run", "--input", "log.txt", "--follow"]
        done = cli_writing_to(output, args, tmp_path, stderr=subprocess.STDOUT)
    assert done.returncode == 2
    events = events_of(log.read_bytes().split(b"\n", 2)[2].decode())
    assert [e["event"] for e in events] == ["worker_started", "fatal_error", "worker_stopped"]
    assert "where the log lines go" in str(events[1]["message"])
    assert not (tmp_path / "checkpoint.json").exists()
    with log.open("ab") as output:  # `reset` reads no input: its lines may go anywhere
        done = cli_writing_to(output, ["reset", "--input", "log.txt"], tmp_path)
    assert done.returncode == 0


@pytest.mark.parametrize("linked", ["from the glob", "as the settings"])
def test_links_to_own_files_under_the_glob_are_never_read_between_saves(
    tmp_path: Path, linked: str
) -> None:
    """`data/*` reaches the checkpoint and the result through links (or the settings name
    links to files in `data`, written through them), and every save is a new file with a
    temporary one before it: following, scans racing 5 ms saves never take any for input."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "numbers.txt").write_bytes(b"1\n2\n")
    own: list[str] = []
    if linked == "from the glob":
        (data / "state.txt").symlink_to("../checkpoint.json")
        (data / "summary.txt").symlink_to("../result.json")
    else:
        (tmp_path / "state.json").symlink_to("data/state.txt")
        (tmp_path / "summary.json").symlink_to("data/summary.txt")
        own = ["--checkpoint", "state.json", "--result", "summary.json"]
    args = ["--input", "data/*", "--follow", "--poll-interval", "0.005", *own]
    worker = WorkerProcess([*args, "--checkpoint-interval", "0.005"], tmp_path)
    worker.wait_for("caught_up", sum=3)
    with (data / "numbers.txt").open("ab") as grows:  # every save differs from the last
        for number in range(3, 400):
            grows.write(f"{number}\n".encode())
            grows.flush()
            time.sleep(0.005)
    worker.wait_for("caught_up", sum=sum(range(400)))
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    discovered = {event["path"] for event in worker.named("file_discovered")}
    assert discovered == {"data/numbers.txt"}
    assert worker.named("bad_record") == []


@pytest.mark.parametrize("policy", ["fail", "restart"])
def test_a_file_truncated_below_its_position_during_a_run_is_input_changed(
    tmp_path: Path, policy: str
) -> None:
    """Not following: a file cut below the position is input_changed, never 'completed' past it."""
    data = _numbers(200_000, seed=7)
    path = tmp_path / "numbers.txt"
    path.write_bytes(data)
    kept = data[: data.index(b"\n", 1000) + 1]
    args = ["--max-rate", "50000", "--on-input-change", policy, *FAST]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("checkpoint_saved", offset=lambda o: o > len(kept))
    os.truncate(path, len(kept))
    changed = worker.wait_for("input_changed", reason="truncated")
    assert changed["action"] == policy
    if policy == "fail":
        assert worker.finish() == 1
        assert len(worker.errors) == 1
        assert _json(tmp_path / "checkpoint.json")["offset"] > len(kept)  # type: ignore[operator]
        return
    assert worker.finish() == 0
    expected = expected_of(kept)
    result = _json(tmp_path / "result.json")
    assert (result["sum"], result["records"], result["offset"]) == (
        expected.sum,
        expected.records,
        expected.offset,
    )


@pytest.mark.parametrize("umask", [0o077, 0o022])
def test_files_are_created_with_the_umask_honoured(tmp_path: Path, umask: int) -> None:
    """Checkpoint, result and lock get 0o666 less the umask of the process."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    done = subprocess.run(
        [sys.executable, "-m", "service", "run"],
        cwd=tmp_path,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(umask),
    )
    assert done.returncode == 0, done.stdout
    for name in ("checkpoint.json", "result.json", "checkpoint.json.lock"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_a_directory_symlink_loop_under_double_star_is_walked_once(tmp_path: Path) -> None:
    """`**` over directory links that loop: start-up ends, each file counted once, said once."""
    data = tmp_path / "in"
    (data / "a" / "b").mkdir(parents=True)
    (data / "a" / "b" / "up").symlink_to("../..")
    (data / "a" / "self").symlink_to(".")
    (data / "a" / "b" / "also").symlink_to(data)
    parts = [_numbers(100, seed) for seed in range(3)]
    for directory, part in zip((data, data / "a", data / "a" / "b"), parts, strict=True):
        (directory / "n.txt").write_bytes(part)
    started = time.monotonic()
    done = cli(["run", "--input", "in/**/*.txt"], tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout
    assert time.monotonic() - started < 30
    expected = expected_of_files(parts)
    result = _json(tmp_path / "result.json")
    assert (result["sum"], result["records"]) == (expected.sum, expected.records)
    assert len([e for e in events_of(done.stdout) if e["event"] == "directory_loop"]) == 1


# Permissions hold for root too once it runs without the capabilities that override them.
_NO_OVERRIDE = ("dac_override", "dac_read_search")
_AS_IF_NOT_ROOT = (
    (
        "setpriv",
        f"--bounding-set=-{',-'.join(_NO_OVERRIDE)}",
        f"--inh-caps=-{',-'.join(_NO_OVERRIDE)}",
    )
    if os.geteuid() == 0
    else ()
)


@pytest.mark.parametrize(
    ("pattern", "locked"), [("in/**", "in/locked"), ("in/locked/*.txt", "in/locked")]
)
def test_a_directory_the_globs_cannot_list_is_said_once_a_run(
    tmp_path: Path, pattern: str, locked: str
) -> None:
    """A directory of inputs that cannot be listed (mode 000): a `directory_unreadable` warning
    naming it and why, once a run however many scans meet it; the readable files are read."""
    (tmp_path / "in" / "locked").mkdir(parents=True)
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n3\n")
    (tmp_path / "in" / "locked" / "b.txt").write_bytes(b"10\n")
    (tmp_path / locked).chmod(0)
    try:
        args = ["--input", pattern, "--follow", "--poll-interval", "0.05"]
        worker = WorkerProcess(args, tmp_path, prefix=_AS_IF_NOT_ROOT)
        try:
            worker.wait_for(("caught_up", "waiting_for_files"))
            time.sleep(0.5)  # scans go on meeting it
            worker.signal(signal.SIGTERM)
            assert worker.finish() == 0
        finally:
            worker.kill()
    finally:
        (tmp_path / locked).chmod(0o755)
    [warning] = worker.named("directory_unreadable")
    assert warning["path"] == locked
    assert "Permission denied" in str(warning["message"])
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    expected = 6 if pattern == "in/**" else 0
    assert final["sum"] == expected


def test_idle_followed_files_beyond_the_open_slots_are_not_reopened(tmp_path: Path) -> None:
    """500 followed files for 8 slots: caught up, the files that gave their slot up are opened
    again only when a scan sees them change, not at every poll; one that grows is read."""
    data = tmp_path / "in"
    data.mkdir()
    for index in range(500):
        (data / f"{index:03}.txt").write_bytes(f"{index}\n".encode())
    trace = tmp_path / "opens.log"
    args = ["--input", "in/*.txt", "--follow", "--max-open-files", "8", "--poll-interval", "0.05"]
    worker = WorkerProcess(args, tmp_path, prefix=strace_prefix(trace, "openat"))
    worker.wait_for("caught_up", records=500, timeout=60)

    def data_opens() -> int:
        return trace.read_text().count('"in/')

    idle_from = data_opens()
    assert idle_from >= 500  # each file opened at least once
    time.sleep(1.0)  # 20 polls
    assert data_opens() - idle_from <= 8  # at most the files that kept their slot, once
    with (data / "250.txt").open("ab") as grows:
        grows.write(b"1000\n")
    worker.wait_for("caught_up", records=501, sum=sum(range(500)) + 1000)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0


def test_the_longest_names_allowed_for_the_checkpoint_and_result_are_saved(tmp_path: Path) -> None:
    """Names of the longest length the settings allow: every save (its temporary file's name
    included) and the lock fit a directory entry; one byte more is exit 2 before any reading."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n3\n")
    checkpoint, result = "c" * LONGEST_WRITTEN_NAME, "r" * LONGEST_WRITTEN_NAME
    done = cli(["run", "--checkpoint", checkpoint, "--result", result], tmp_path)
    assert done.returncode == 0, done.stdout
    assert _json(tmp_path / result)["sum"] == 6
    assert _json(tmp_path / checkpoint)["offset"] == 6
    done = cli(["run", "--checkpoint", checkpoint + "c"], tmp_path)
    assert done.returncode == 2
    assert "at most" in done.stderr


def test_a_missing_result_directory_is_found_at_start_up(tmp_path: Path) -> None:
    """`result` in a directory that does not exist: exit 1 before reading, one line naming it."""
    (tmp_path / "numbers.txt").write_bytes(_numbers(100_000, seed=1))
    done = cli(["run", "--result", "missing/result.json", "--max-rate", "1000"], tmp_path)
    assert done.returncode == 1
    assert "missing" in _one_error(done)
    assert not [e for e in events_of(done.stdout) if e["event"] == "checkpoint_saved"]


def test_two_thousand_files_stop_on_sigterm_in_time_and_resume_exactly(tmp_path: Path) -> None:
    """2,000 files: SIGTERM mid-way exits 0 in time with its final checkpoint; resume is exact."""
    data = tmp_path / "in"
    data.mkdir()
    parts = [_numbers(1 + index % 4, seed=index) for index in range(2000)]
    for index, part in enumerate(parts):
        (data / f"{index:05d}.txt").write_bytes(part)
    args = ["--input", "in/*.txt", "--max-rate", "1500", "--max-open-files", "64", *FAST]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("checkpoint_saved", reason="timer", records=lambda r: r > 500)
    sent = worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert worker.ended is not None
    assert worker.ended - sent < 5.0  # shutdown_timeout
    (final,) = worker.named("checkpoint_saved", reason="shutdown")
    expected = expected_of_files(parts)
    assert 0 < final["records"] < expected.records
    resumed = cli(["run", "--input", "in/*.txt"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    result = _json(tmp_path / "result.json")
    got = (result["sum"], result["records"], result["offset"])
    assert got == (expected.sum, expected.records, expected.offset)
    assert len(result["files"]) == 2000  # type: ignore[arg-type]


def test_a_closed_file_is_forgotten_after_forget_closed_after(tmp_path: Path) -> None:
    """A file renamed out of every pattern and closed leaves the checkpoint after the retention;
    the totals keep what it added up to."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"10\n")
    args = ["--input", "in/*.txt", "--follow", "--close-inactive", "0.2", *FAST]
    worker = WorkerProcess([*args, "--forget-closed-after", "0.3"], tmp_path)
    worker.wait_for("caught_up", sum=13)
    (tmp_path / "in" / "a.txt").rename(tmp_path / "in" / "a.old")
    worker.wait_for("file_removed", path="in/a.txt", reason="inactive")
    worker.wait_for("file_forgotten", path="in/a.txt", sum=3)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    saved = _json(tmp_path / "checkpoint.json")
    assert [f["path"] for f in saved["files"]] == ["in/b.txt"]  # type: ignore[attr-defined]
    assert (saved["sum"], saved["gone"]["sum"]) == (13, 3)  # type: ignore[index]
