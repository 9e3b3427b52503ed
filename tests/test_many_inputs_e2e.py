"""Many inputs, end to end: globs and lists, identity, rotation, format 2, with real processes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.oracle import Expected, expected_of, expected_of_files
from tests.processes import RUN, WorkerProcess, cli, events_of, worker_env

FAST = ["--poll-interval", "0.05", "--checkpoint-interval", "0.05"]


def _numbers(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(b"%d\n" % rng.randrange(-(10**6), 10**6) for _ in range(count))


def _total(*parts: bytes) -> Expected:
    """The oracle over several files: what their records add up to, each file on its own."""
    return expected_of_files(list(parts))


def _json(path: Path) -> dict[str, object]:
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _assert_totals(document: dict[str, object], expected: Expected) -> None:
    got = (document["sum"], document["records"], document["bad_records"], document["offset"])
    assert got == (expected.sum, expected.records, expected.bad_records, expected.offset)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    directory = tmp_path / "in"
    directory.mkdir()
    for index in range(3):
        (directory / f"part-{index}.txt").write_bytes(_numbers(20_000 + index, seed=index))
    return directory


def test_a_glob_of_files_sums_every_file_once_with_totals_and_files(data: Path) -> None:
    """`input` a glob: result.json and status hold the totals over all files and one entry each."""
    parts = {p.name: p.read_bytes() for p in sorted(data.iterdir())}
    done = cli(["run", "--input", "in/*.txt"], data.parent)
    assert done.returncode == 0, done.stdout
    result = _json(data.parent / "result.json")
    _assert_totals(result, _total(*parts.values()))
    files = result["files"]
    assert isinstance(files, list)
    assert sorted(Path(f["path"]).name for f in files) == sorted(parts)
    for entry in files:
        expected = expected_of(parts[Path(entry["path"]).name])
        assert (entry["sum"], entry["records"], entry["offset"]) == (
            expected.sum,
            expected.records,
            expected.offset,
        )
    status = cli(["status", "--json", "--input", "in/*.txt"], data.parent)
    report = json.loads(status.stdout)
    _assert_totals(report, _total(*parts.values()))
    assert report["percent"] == 100.0
    assert sorted(f["state"] for f in report["files"]) == ["done"] * 3
    person = cli(["status", "--input", "in/*.txt"], data.parent).stdout
    assert all(f"in/{name}" in person for name in parts)
    assert person.count("done") == 3


def test_a_list_of_paths_and_globs_reads_each_file_once(data: Path) -> None:
    """A list (repeated flag) whose entries overlap still reads each file once."""
    parts = [p.read_bytes() for p in sorted(data.iterdir())]
    args = ["run", "--input", "in/part-0.txt", "--input", "in/*.txt"]
    assert cli(args, data.parent).returncode == 0
    _assert_totals(_json(data.parent / "result.json"), _total(*parts))


def test_the_workers_own_files_and_excluded_globs_are_never_read(data: Path) -> None:
    """`*` in the data directory skips checkpoint, result, lock and `exclude` matches."""
    (data / "notes.md").write_bytes(b"not numbers\n")
    parts = [p.read_bytes() for p in sorted(data.glob("*.txt"))]
    args = ["--input", "in/*", "--exclude", "*.md", "--checkpoint", "in/checkpoint.json"]
    args += ["--result", "in/result.json"]
    for _ in range(2):  # the second run sees the checkpoint, result and lock in the directory
        done = cli(["run", *args, "--on-bad-record", "fail"], data.parent)
        assert done.returncode == 0, done.stdout
        _assert_totals(_json(data / "result.json"), _total(*parts))
    (data / "checkpoint.json").unlink()
    assert cli(["run", *args], data.parent).returncode == 0
    _assert_totals(_json(data / "result.json"), _total(*parts))


def test_a_log_redirected_into_the_globbed_directory_is_never_read(tmp_path: Path) -> None:
    """`run --follow --input 'data/*' > data/out.log`: the worker's own log is one of its files,
    never an input (read, each of its lines would be a bad record logging another line)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"5\n")
    with (data / "out.log").open("wb") as log:
        worker = subprocess.Popen(
            [*RUN, "--input", "data/*", "--follow", *FAST],
            cwd=tmp_path,
            env=worker_env(),
            stdout=log,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # many polls and saves, each a log line
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 0
        finally:
            worker.kill()
    events = events_of((data / "out.log").read_text())
    assert {e["path"] for e in events if e["event"] == "file_discovered"} == {"data/a.txt"}
    checkpoint = _json(tmp_path / "checkpoint.json")
    assert (checkpoint["sum"], checkpoint["bad_records"]) == (5, 0)


def test_a_glob_matching_nothing_exits_1_naming_it_or_waits_when_following(
    tmp_path: Path,
) -> None:
    """No match: exit 1 naming the pattern; following, wait (logged once) and read what comes."""
    done = cli(["run", "--input", "in/*.txt"], tmp_path)
    assert done.returncode == 1
    (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert "in/*.txt" in error["message"]
    worker = WorkerProcess(["--input", "in/*.txt", "--follow", *FAST], tmp_path)
    worker.wait_for("waiting_for_files")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"5\n6\n")
    worker.wait_for("file_discovered", path="in/a.txt")
    worker.wait_for("caught_up", sum=11)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert len(worker.named("waiting_for_files")) == 1


def _stop_midway(args: list[str], cwd: Path) -> dict[str, object]:
    worker = WorkerProcess([*args, "--max-rate", "20000", *FAST], cwd)
    worker.wait_for("checkpoint_saved", reason="timer")
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    return _json(cwd / "checkpoint.json")


def test_files_renamed_while_stopped_keep_their_positions(data: Path) -> None:
    """Stop midway, rename every file (still matching): the rerun resumes each, exact totals."""
    parts = [p.read_bytes() for p in sorted(data.iterdir())]
    saved = _stop_midway(["--input", "in/*.txt*"], data.parent)
    assert 0 < saved["offset"] < sum(len(p) for p in parts)  # type: ignore[operator]
    for path in sorted(data.iterdir()):
        path.rename(path.with_name(path.name + ".1"))
    done = cli(["run", "--input", "in/*.txt*"], data.parent)
    assert done.returncode == 0
    rotated = [e for e in events_of(done.stdout) if e["event"] == "file_rotated"]
    assert len(rotated) == 3
    assert not [e for e in events_of(done.stdout) if e["event"] == "file_discovered"]
    _assert_totals(_json(data.parent / "result.json"), _total(*parts))


def test_two_files_with_equal_bytes_are_two_files(tmp_path: Path) -> None:
    """`generate` twice with one seed: two files, equal bytes, both counted."""
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt"):
        made = cli(
            ["generate", "--count", "5000", "--seed", "7", "--output", f"in/{name}"], tmp_path
        )
        assert made.returncode == 0
    content = (tmp_path / "in" / "a.txt").read_bytes()
    assert content == (tmp_path / "in" / "b.txt").read_bytes()
    saved = _stop_midway(["--input", "in/*.txt"], tmp_path)
    assert saved["version"] == 2
    assert cli(["run", "--input", "in/*.txt"], tmp_path).returncode == 0
    _assert_totals(_json(tmp_path / "result.json"), _total(content, content))


def test_rotation_while_following_counts_every_line_once(tmp_path: Path) -> None:
    """Rename then create, with writes to both names: totals equal the oracle over every file."""
    (tmp_path / "logs").mkdir()
    live = tmp_path / "logs" / "numbers.txt"
    live.write_bytes(b"1\n2\n")
    worker = WorkerProcess(["--input", "logs/numbers.txt*", "--follow", *FAST], tmp_path)
    worker.wait_for("caught_up", sum=3)
    with live.open("ab") as writer:
        live.rename(live.with_name("numbers.txt.1"))
        writer.write(b"10\n")  # the writer keeps appending to the renamed file
        live.write_bytes(b"100\n")
    worker.wait_for("file_rotated", path="logs/numbers.txt.1", old_path="logs/numbers.txt")
    worker.wait_for("file_discovered", path="logs/numbers.txt")
    worker.wait_for("caught_up", sum=113)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    saved = _json(tmp_path / "checkpoint.json")
    assert (saved["sum"], saved["records"]) == (113, 4)


def test_a_file_renamed_out_of_every_pattern_is_read_until_inactive_then_closed(
    tmp_path: Path,
) -> None:
    """Renamed out: still read while it grows, closed after close_inactive, never read twice."""
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "a.txt"
    path.write_bytes(b"1\n")
    args = ["--input", "in/*.txt", "--follow", "--close-inactive", "0.5", *FAST]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("caught_up", sum=1)
    moved = tmp_path / "in" / "a.old"
    path.rename(moved)
    with moved.open("ab") as writer:
        writer.write(b"2\n")
    worker.wait_for("caught_up", sum=3)
    worker.wait_for("file_removed", path="in/a.txt", reason="inactive")
    with moved.open("ab") as writer:
        writer.write(b"4\n")  # after closing: not read
    moved.rename(path)  # and back under the pattern: resumes where it was closed
    worker.wait_for("caught_up", sum=7)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0


def test_a_file_deleted_while_read_is_finished_through_its_descriptor(tmp_path: Path) -> None:
    """Deleted mid-read (following): the rest is still read, then the file is folded away."""
    (tmp_path / "in").mkdir()
    content = _numbers(30_000, seed=3)
    (tmp_path / "in" / "a.txt").write_bytes(content)
    worker = WorkerProcess(
        ["--input", "in/*.txt", "--follow", "--max-rate", "30000", *FAST], tmp_path
    )
    worker.wait_for("checkpoint_saved", reason="timer")
    (tmp_path / "in" / "a.txt").unlink()
    removed = worker.wait_for("file_removed", path="in/a.txt", reason="deleted", timeout=60)
    expected = expected_of(content)
    assert (removed["records"], removed["sum"]) == (expected.records, expected.sum)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    saved = _json(tmp_path / "checkpoint.json")
    _assert_totals(saved, expected)
    assert saved["files"] == []
    status = json.loads(cli(["status", "--json", "--input", "in/*.txt"], tmp_path).stdout)
    assert (status["sum"], status["files"]) == (expected.sum, [])


@pytest.mark.parametrize("policy", ["fail", "restart"])
def test_a_truncated_file_of_a_glob_fails_or_is_read_again(tmp_path: Path, policy: str) -> None:
    """Following a glob: a file truncated below its position is input_changed for that file."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n3\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"100\n")
    args = ["--input", "in/*.txt", "--follow", "--on-input-change", policy, *FAST]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("caught_up", sum=106)
    (tmp_path / "in" / "a.txt").write_bytes(b"7\n")
    changed = worker.wait_for("input_changed", path="in/a.txt", reason="truncated")
    assert changed["action"] == policy
    if policy == "fail":
        assert worker.finish() == 1
        return
    worker.wait_for("caught_up", sum=107)  # a.txt's 6 taken out, its 7 counted
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0


@pytest.mark.parametrize("policy", ["fail", "restart"])
def test_a_file_of_a_glob_rewritten_in_place_while_stopped_is_an_input_change(
    tmp_path: Path, policy: str
) -> None:
    """`>` rewrites a file of the glob between two runs (same name, same inode, other bytes):
    the next run says input_changed for it, as it would while running; it is not a new file
    counted on top of what the old one added."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n3\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"100\n")
    args = ["run", "--input", "in/*.txt", "--on-input-change", policy]
    assert cli(args, tmp_path).returncode == 0
    inode = (tmp_path / "in" / "a.txt").stat().st_ino
    with (tmp_path / "in" / "a.txt").open("r+b") as rewrite:  # what `>` does: same inode
        rewrite.truncate(0)
        rewrite.write(b"40\n50\n60\n")
    assert (tmp_path / "in" / "a.txt").stat().st_ino == inode
    again = cli(args, tmp_path)
    [changed] = [e for e in events_of(again.stdout) if e["event"] == "input_changed"]
    assert (changed["path"], changed["reason"], changed["action"]) == (
        "in/a.txt",
        "content_changed",
        policy,
    )
    if policy == "fail":
        assert again.returncode == 1
        return
    assert again.returncode == 0
    _assert_totals(_json(tmp_path / "result.json"), _total(b"40\n50\n60\n", b"100\n"))


@pytest.mark.parametrize("policy", ["fail", "restart"])
def test_one_plain_path_on_a_checkpoint_of_several_files_is_an_input_change(
    tmp_path: Path, policy: str
) -> None:
    """A checkpoint written for a glob, then `--input` one of its files: the checkpoint's totals
    count the other file too, so it does not describe this input. Never a silent sum of both:
    `input_changed` (fail: exit 1, checkpoint untouched; restart: this file alone, exactly)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n3\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"100\n200\n")
    assert cli(["run", "--input", "in/*.txt"], tmp_path).returncode == 0
    before = (tmp_path / "checkpoint.json").read_bytes()
    again = cli(["run", "--input", "in/a.txt", "--on-input-change", policy], tmp_path)
    [changed] = [e for e in events_of(again.stdout) if e["event"] == "input_changed"]
    assert (changed["path"], changed["reason"], changed["action"]) == (
        "in/a.txt",
        "other_files",
        policy,
    )
    if policy == "fail":
        assert again.returncode == 1
        assert (tmp_path / "checkpoint.json").read_bytes() == before
        return
    assert again.returncode == 0, again.stdout
    _assert_totals(_json(tmp_path / "result.json"), _total(b"1\n2\n3\n"))
    assert cli(["run", "--input", "in/a.txt"], tmp_path).returncode == 0


def test_a_fifo_as_the_input_is_refused_at_once(tmp_path: Path) -> None:
    """A plain path naming a FIFO: one clear line and exit 1 at once, never a wait for a writer."""
    os.mkfifo(tmp_path / "numbers.txt")
    started = time.monotonic()
    done = cli(["run"], tmp_path, timeout=30)
    assert done.returncode == 1
    assert time.monotonic() - started < 10
    (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert "not a regular file" in error["message"]
    assert "Traceback" not in done.stderr


def test_at_most_max_open_files_are_open_at_once(tmp_path: Path) -> None:
    """max_open_files=2 over 5 paced files: never more than 2 of them open, and all are read."""
    (tmp_path / "in").mkdir()
    parts = [_numbers(2000, seed=n) for n in range(5)]
    for index, part in enumerate(parts):
        (tmp_path / "in" / f"{index}.txt").write_bytes(part)
    args = ["--input", "in/*.txt", "--max-open-files", "2", "--max-rate", "20000"]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("checkpoint_not_found")
    most = 0
    inputs = str(tmp_path / "in")
    while worker.process.poll() is None:
        try:
            links = [
                os.readlink(f"/proc/{worker.process.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{worker.process.pid}/fd")
            ]
        except OSError:
            break
        most = max(most, sum(link.startswith(inputs) for link in links))
        time.sleep(0.01)
    assert worker.finish() == 0
    assert most == 2
    _assert_totals(_json(tmp_path / "result.json"), _total(*parts))


def test_following_more_files_than_max_open_files_reads_them_all_in_turn(tmp_path: Path) -> None:
    """Following 5 files through 2 slots: caught-up files give their slot up, all are read."""
    (tmp_path / "in").mkdir()
    for index in range(5):
        (tmp_path / "in" / f"{index}.txt").write_bytes(b"%d\n" % (10**index))
    args = ["--input", "in/*.txt", "--follow", "--max-open-files", "2", *FAST]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("caught_up", sum=11111)
    with (tmp_path / "in" / "0.txt").open("ab") as writer:
        writer.write(b"100000\n")
    with (tmp_path / "in" / "4.txt").open("ab") as writer:
        writer.write(b"1000000\n")
    worker.wait_for("caught_up", sum=1111111)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0


def test_a_version_1_checkpoint_resumes_exactly_and_becomes_version_2(tmp_path: Path) -> None:
    """A format-1 checkpoint is resumed at its offset and replaced by format 2 at the next save."""
    content = _numbers(1000, seed=5)
    (tmp_path / "numbers.txt").write_bytes(content)
    head = content[: content.index(b"\n", 2000) + 1]

    v1 = {
        "version": 1,
        "input": "numbers.txt",
        **{k: v for k, v in expected_of(head).__dict__.items() if k != "bad_lines"},
        "identity": {
            "head_sha256": hashlib.sha256(head[:1024]).hexdigest(),
            "tail_sha256": hashlib.sha256(head[-1024:]).hexdigest(),
        },
        "completed": False,
        "updated_at": "2024-05-01T12:00:00.000Z",
    }
    (tmp_path / "checkpoint.json").write_text(json.dumps(v1))
    status = json.loads(cli(["status", "--json"], tmp_path).stdout)
    assert status["offset"] == len(head)
    done = cli(["run"], tmp_path)
    assert done.returncode == 0
    loaded = [e for e in events_of(done.stdout) if e["event"] == "checkpoint_loaded"]
    assert loaded[0]["offset"] == len(head)
    _assert_totals(_json(tmp_path / "result.json"), expected_of(content))
    assert _json(tmp_path / "checkpoint.json")["version"] == 2


def test_status_shows_a_checkpoints_text_escaped(tmp_path: Path) -> None:
    """An edited checkpoint (format 1 has no checksum) whose `updated_at` holds a terminal's
    escape sequence and a newline: `status` prints it escaped, on its one line."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    v1 = {
        "version": 1,
        "input": "numbers.txt",
        **{k: v for k, v in expected_of(b"").__dict__.items() if k != "bad_lines"},
        "completed": False,
        "updated_at": "\x1b[2J\x1b[31mhacked\nsum         0",
    }
    (tmp_path / "checkpoint.json").write_text(json.dumps(v1))
    done = cli(["status"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\x1b" not in done.stdout
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("updated_at")]
    assert line == "updated_at  \\x1b[2J\\x1b[31mhacked\\x0asum         0"


def test_a_flipped_digit_in_a_checkpoint_is_corrupt_and_left_untouched(data: Path) -> None:
    """One digit of a sum changed in a format-2 checkpoint: exit 1, the file as it was."""
    _stop_midway(["--input", "in/*.txt"], data.parent)
    path = data.parent / "checkpoint.json"
    text = path.read_bytes()
    at = text.index(b'"sum": ') + len(b'"sum": ') + 1
    flipped = text[:at] + (b"1" if text[at : at + 1] != b"1" else b"2") + text[at + 1 :]
    path.write_bytes(flipped)
    done = cli(["run", "--input", "in/*.txt"], data.parent)
    assert done.returncode == 1
    (error,) = [e for e in events_of(done.stdout) if e["level"] == "error"]
    assert "corrupt" in error["message"]
    assert path.read_bytes() == flipped


def test_generate_with_a_glob_input_needs_an_output(tmp_path: Path) -> None:
    """`generate` cannot guess which file a glob means: exit 2 without --output, one line on
    stderr as any usage error, nothing written."""
    done = cli(["generate", "--input", "in/*.txt"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "checkpoint-worker: error: generate needs --output when the input is a glob or a list "
        "(in/*.txt)"
    ]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--output", "result.json"], "result and --output"),
        (["--output", "checkpoint.json.lock"], "lock and --output"),
        (["--output", "checkpoint.json", "--force"], "checkpoint and --output"),
        (["--input", "checkpoint.json"], "checkpoint and input"),
    ],
)
def test_generate_never_writes_over_the_workers_own_files(
    tmp_path: Path, args: list[str], named: str
) -> None:
    """`generate` writes an input: never the checkpoint, its lock or the result (exit 2, one
    line on stderr, the file untouched)."""
    (tmp_path / "checkpoint.json").write_bytes(b"{}")
    done = cli(["generate", *args], tmp_path)
    assert done.returncode == 2
    (error,) = done.stderr.splitlines()
    assert named in error
    assert done.stdout == ""
    assert (tmp_path / "checkpoint.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--count", "99999999999999999999"], "argument --count: must be at most 10000000000"),
        (["--count", "2e10"], "argument --count: must be at most 10000000000"),
        (["--count", "-1"], "argument --count: must be at least 0"),
        (["--count", "1.5"], "argument --count: expected a whole number, got '1.5'"),
        (["--output", "new/"], "argument --output: expected a file's path"),
        (["--output", "a" * 5000], "argument --output: a path of at most 4095 bytes"),
        (["--seed", "-5"], "argument --seed: expected a whole number from 0"),  # it gave 5's file
    ],
)
def test_generate_refuses_an_absurd_count_or_output_as_a_usage_error(
    tmp_path: Path, args: list[str], named: str
) -> None:
    """A count of absurd size is a typo that would fill the disk, and `new/` names a directory:
    each one line on stderr and exit 2, as any bad flag, before a byte is written."""
    done = cli(["generate", *args], tmp_path)
    assert done.returncode == 2
    assert named in done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_takes_a_count_written_as_a_whole_number_setting_is(tmp_path: Path) -> None:
    """`--count 1e3` is 1000, as `max_line_bytes = 1e3` is: one way to write a number."""
    done = cli(["generate", "--count", "1e3", "--output", "n.txt", "--seed", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "n.txt").read_bytes().splitlines()) == 1000


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_a_remount_that_changes_the_device_number_keeps_every_position(tmp_path: Path) -> None:
    """Stop midway, remount the files' file system on another loop device: exact resume."""
    image = tmp_path / "fs.img"
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)

    attached: list[str] = []

    def attach() -> str:
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        attached.append(device)
        return device

    def mount() -> tuple[str, int]:
        device = attach()
        subprocess.run(["mount", device, str(mount_point)], check=True)
        return device, os.stat(mount_point).st_dev

    first, before = mount()
    try:
        parts = [_numbers(20_000, seed=n) for n in range(2)]
        for index, part in enumerate(parts):
            (mount_point / f"{index}.txt").write_bytes(part)
        args = ["--input", "mnt/*.txt"]
        saved = _stop_midway(args, tmp_path)
        subprocess.run(["umount", str(mount_point)], check=True)
        subprocess.run(["losetup", "--detach", first], check=True)
        attach()  # takes the freed device, so the remount gets another one
        _second, after = mount()
        assert after != before
        done = cli(["run", *args], tmp_path)
        assert done.returncode == 0
        loaded = [e for e in events_of(done.stdout) if e["event"] == "checkpoint_loaded"]
        assert loaded[0]["offset"] == saved["offset"]
        assert not [e for e in events_of(done.stdout) if e["event"] == "file_discovered"]
        _assert_totals(_json(tmp_path / "result.json"), _total(*parts))
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
        for device in attached:
            subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)


@pytest.mark.parametrize("max_open_files", ["1", "8"])
def test_a_file_rotated_out_is_read_until_inactive_whatever_the_slots(
    tmp_path: Path, max_open_files: str
) -> None:
    """Two followed files, and `a.txt` renamed to `a.old` (out of `in/*.txt`) while its writer
    keeps appending to it for a second, as logrotate leaves it. With a slot for each file it is
    read on through its descriptor; with one slot for both, it may be waiting or parked (not
    open) when it is renamed: it is found beside its old name and reopened by the new one. Each
    way, what was appended within `close_inactive` is read, then the file is closed."""
    (tmp_path / "in").mkdir()
    a, b = tmp_path / "in" / "a.txt", tmp_path / "in" / "b.txt"
    a.write_bytes(b"1\n" * 10)
    b.write_bytes(b"2\n" * 10)
    args = ["--input", "in/*.txt", "--follow", *FAST, "--close-inactive", "1.5"]
    worker = WorkerProcess([*args, "--max-open-files", max_open_files], tmp_path)
    worker.wait_for("caught_up", sum=30)
    with a.open("ab") as writer_a, b.open("ab") as writer_b:
        a.rename(tmp_path / "in" / "a.old")
        for _ in range(10):
            writer_a.write(b"1000\n")
            writer_a.flush()
            writer_b.write(b"3\n")
            writer_b.flush()
            time.sleep(0.1)
    worker.wait_for("file_removed", reason="inactive", timeout=30)
    worker.wait_for("caught_up", sum=10_060, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert _json(tmp_path / "checkpoint.json")["sum"] == 10 + 10_000 + 20 + 30


def test_a_closed_file_waiting_for_retirement_renamed_beside_its_old_name_stays_closed(
    tmp_path: Path,
) -> None:
    """One slot, held by a big file read at a paced rate; the small one, parked, is woken by an
    append and waits for the slot. Moved to another directory it is closed (no name to reopen
    it by); moved back beside its old name while still waiting to be retired, it stays closed:
    the run goes on, and stops gracefully with every record it read counted once."""
    inputs, other = tmp_path / "in", tmp_path / "other"
    inputs.mkdir()
    other.mkdir()
    (inputs / "a.txt").write_bytes(b"1\n" * 10)
    (inputs / "b.txt").write_bytes(b"2\n" * 100_000)
    args = ["--input", "in/*.txt", "--follow", "--poll-interval", "0.1", "--max-rate", "2000"]
    worker = WorkerProcess([*args, "--max-open-files", "1"], tmp_path)
    worker.wait_for("checkpoint_saved", reason="timer")
    with (inputs / "a.txt").open("ab") as writer:
        writer.write(b"5\n")
    time.sleep(0.5)
    (inputs / "a.txt").rename(other / "a.txt")
    time.sleep(0.5)
    (other / "a.txt").rename(inputs / "a.txt.1")
    time.sleep(1.0)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.tail()
    assert not [e for e in worker.events if e["level"] == "error"]


@pytest.mark.parametrize("how", ["deleted", "renamed_out"])
def test_a_followed_file_whose_last_line_waits_for_its_end_still_ends(
    tmp_path: Path, how: str
) -> None:
    """`a.txt` ends on "2" counted without its newline, then a blank comes and no newline:
    following, the line waits for its end. Deleted, or renamed out and inactive, the file
    ends there (the blank ends the line, as at the end of a run not following): it is removed,
    `b.txt` is read on (with one slot, it gets the slot), and every record is counted once."""
    (tmp_path / "in").mkdir()
    a, b = tmp_path / "in" / "a.txt", tmp_path / "in" / "b.txt"
    a.write_bytes(b"1\n2")
    b.write_bytes(b"10\n")
    assert cli(["run", "--input", "in/*.txt"], tmp_path).returncode == 0
    with a.open("ab") as writer:
        writer.write(b" ")
    args = ["--input", "in/*.txt", "--follow", *FAST, "--close-inactive", "1", "--max-open-files"]
    # Deleted: open, through its descriptor; renamed out: with one slot, maybe parked too.
    worker = WorkerProcess([*args, "8" if how == "deleted" else "1"], tmp_path)
    worker.wait_for("caught_up", sum=13)
    if how == "deleted":
        a.unlink()
    else:
        a.rename(tmp_path / "in" / "a.old")
    removed = worker.wait_for("file_removed", timeout=30)
    assert removed["reason"] == ("deleted" if how == "deleted" else "inactive")
    assert (removed["records"], removed["sum"]) == (2, 3)
    with b.open("ab") as writer:
        writer.write(b"20\n")
    worker.wait_for("caught_up", sum=33, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert _json(tmp_path / "checkpoint.json")["records"] == 4
