"""The world around a running worker: closed pipes, SIGHUP, paused processes, hostile HTTP clients.

Every test runs a real worker process and meets it as the world would: a real pipe whose reader
goes away, real signals, real sockets that hang up, reset or say nothing.
"""

from __future__ import annotations

import array
import contextlib
import decimal
import fcntl
import json
import os
import pty
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.descriptors import LOWEST_LIMIT, MAX_CONNECTIONS
from service.settings import MAX_LINE_BYTES
from service.sources.files.partition import CHUNK_BYTES
from service.telemetry.endpoint import READ_TIMEOUT
from service.telemetry.logs import READER_GRACE
from service.telemetry.metrics import MAX_PARTITION_SERIES, OTHER_PARTITIONS
from tests.oracle import expected_of
from tests.processes import (
    RUN,
    WorkerProcess,
    cli,
    cli_writing_to,
    events_of,
    unmeasured,
    worker_env,
)
from tests.scrape import by_label, get, samples_of

SEED = 20261204


def _numbers(count: int) -> bytes:
    rng = random.Random(SEED)
    return b"".join(f"{rng.randrange(-(10**6), 10**6)}\n".encode() for _ in range(count))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "numbers.txt").write_bytes(_numbers(200_000))
    return tmp_path


@pytest.fixture
def running() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; any still running at its end is killed."""
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.kill()


def _start(running: list[WorkerProcess], cwd: Path, *args: str) -> WorkerProcess:
    env = worker_env(WORKER_METRICS_ADDRESS="127.0.0.1:0")
    worker = WorkerProcess(["--checkpoint-interval", "0.2", *args], cwd, env=env)
    running.append(worker)
    return worker


def _address(worker: WorkerProcess) -> tuple[str, int]:
    host, port = worker.wait_for("metrics_listening")["address"].rsplit(":", 1)
    return host, int(port)


def _assert_resumes_to_the_exact_sum(workdir: Path) -> None:
    """The next run finishes the input from the saved checkpoint with the oracle's sum."""
    assert cli(["run"], workdir).returncode == 0
    result = json.loads((workdir / "result.json").read_text())
    expected = expected_of((workdir / "numbers.txt").read_bytes())
    assert (result["sum"], result["records"]) == (expected.sum, expected.records)


def _stop_cleanly(worker: WorkerProcess) -> None:
    """SIGTERM: exit 0 after the final checkpoint, and nothing but JSON lines, no traceback."""
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.tail()
    worker.wait_for("checkpoint_saved", reason="shutdown")
    assert worker.noise == []
    assert "Traceback" not in worker.stderr


# --- a closed stdout ---------------------------------------------------------------------------


def _piped_worker(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """`run ARGS` with its stdout and stderr on pipes this test reads, or does not."""
    return subprocess.Popen(
        [*RUN, *args],
        cwd=cwd,
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("follow", [False, True])
def test_a_closed_stdout_stops_run_with_its_final_checkpoint_and_exit_0(
    workdir: Path, follow: bool
) -> None:
    """`run | head`: when the reader of stdout goes away, run saves its position and exits 0."""
    args = ["--max-rate", "50000", "--checkpoint-interval", "0.1"]
    worker = _piped_worker([*args, "--follow" if follow else "--no-follow"], workdir)
    assert worker.stdout is not None
    saved = 0
    while saved == 0:  # read until a timer save, like `head` reading its lines
        event = json.loads(worker.stdout.readline())
        if event["event"] == "checkpoint_saved":
            saved = event["offset"]
    worker.stdout.close()  # the reader goes away
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert b"Traceback" not in stderr
    checkpoint = json.loads((workdir / "checkpoint.json").read_text())
    assert checkpoint["offset"] >= saved
    assert not checkpoint["completed"]
    _assert_resumes_to_the_exact_sum(workdir)


def test_run_piped_into_head_returns_and_saves_a_checkpoint(workdir: Path) -> None:
    """`run --follow | head -1` in a real shell returns, the worker exits 0 and saves."""
    command = f"{sys.executable} -m service run --follow --max-rate 50000 | head -1; "
    command += 'echo "worker=${PIPESTATUS[0]}" >&2'
    shell = subprocess.run(
        ["bash", "-c", command], cwd=workdir, env=worker_env(), capture_output=True, timeout=30
    )
    assert json.loads(shell.stdout)["event"] == "worker_started"
    assert shell.stderr.decode().strip().splitlines()[-1] == "worker=0"
    assert (workdir / "checkpoint.json").exists()


def test_a_log_that_cannot_be_written_never_stops_the_work(workdir: Path) -> None:
    """stdout on a full device (/dev/full: every write fails with ENOSPC): the run completes
    with the exact result and exit 0, and nothing is printed in the log's place."""
    with open("/dev/full", "w") as full:
        done = cli_writing_to(full, ["run", "--checkpoint-interval", "0.05"], workdir)
    assert done.returncode == 0
    assert done.stderr == b""
    _assert_resumes_to_the_exact_sum(workdir)


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["healthcheck"]])
def test_a_command_whose_output_cannot_be_written_says_so_in_one_line(
    workdir: Path, args: list[str]
) -> None:
    """`status > /dev/full`: exit 1 and one line on stderr, never a traceback. (Log lines are
    another matter: a log write that fails is dropped, and the work goes on.)"""
    assert cli(["run"], workdir).returncode == 0
    with open("/dev/full", "w") as full:
        done = cli_writing_to(full, args, workdir)
    assert done.returncode == 1
    assert done.stderr.decode() == "checkpoint-worker: error: No space left on device\n"


def test_names_an_ascii_terminal_cannot_show_are_escaped_not_a_traceback(tmp_path: Path) -> None:
    """`PYTHONIOENCODING=ascii` (or a C locale's stdout) and a file name that is not ASCII:
    `status` shows it escaped, exit 0."""
    (tmp_path / "données✓.txt").write_bytes(b"1\n2\n")
    env = worker_env(PYTHONIOENCODING="ascii")
    assert cli(["run", "--input", "données✓.txt"], tmp_path, env).returncode == 0
    done = cli(["status", "--input", "données✓.txt"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "input       donn\\xe9es\\u2713.txt (4 bytes)" in done.stdout


def _worker_stuck_writing_its_log(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """A worker following 3,000 files (a `file_discovered` line each: far more than a pipe
    holds) whose stdout nobody reads: once this returns, it waits in a log write."""
    data = tmp_path / "data"
    data.mkdir()
    for index in range(3000):
        (data / f"{index:04}.txt").write_bytes(f"{index}\n".encode())
    worker = _piped_worker(["--input", "data/*.txt", "--follow", *args], tmp_path)
    assert worker.stdout is not None
    pipe_full = time.monotonic() + 30
    held = array.array("i", [0])
    while held[0] < 60_000:  # a pipe holds 64 KiB: the worker now waits in a write
        if time.monotonic() > pipe_full:
            worker.kill()
            pytest.fail("the worker never filled its stdout pipe")
        time.sleep(0.1)
        fcntl.ioctl(worker.stdout.fileno(), termios.FIONREAD, held)
    time.sleep(0.5)
    return worker


def test_a_reader_that_stops_reading_cannot_keep_sigterm_from_saving(tmp_path: Path) -> None:
    """stdout's reader stops reading (a paused pager): the worker waits for it, as Docker's
    blocking log mode does, but SIGTERM still saves the final checkpoint and exits 0, and every
    line that was written is whole."""
    worker = _worker_stuck_writing_its_log(tmp_path)
    try:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
    finally:
        worker.kill()
    output, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert b"Traceback" not in stderr
    assert all(json.loads(line)["event"] for line in output.splitlines())
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert not checkpoint["completed"]
    assert cli(["run", "--input", "data/*.txt"], tmp_path).returncode == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["sum"], result["records"]) == (sum(range(3000)), 3000)


def test_a_short_shutdown_timeout_leaves_its_time_to_the_checkpoint_not_a_stalled_reader(
    tmp_path: Path,
) -> None:
    """`shutdown_timeout` 0.9 s, under the reader's 1 s grace: a stalled reader gets a quarter of
    it, and SIGTERM still saves the final checkpoint and exits 0 (the watchdog ended it, exit 1
    and no checkpoint). The rest of the timeout holds a save of 3,000 files' states, in a
    process that coverage traces on a busy machine."""
    worker = _worker_stuck_writing_its_log(tmp_path, "--shutdown-timeout", "0.9")
    try:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
    finally:
        worker.kill()
    worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert "files" in json.loads((tmp_path / "checkpoint.json").read_text())


def test_a_stdout_closed_before_the_first_line_stops_run_even_when_a_warning_comes_first(
    workdir: Path,
) -> None:
    """A warning logged before the worker listens for a closed stdout (`max_open_files` over
    the descriptor limit) met the closed pipe first: the notice was used up, and `run --follow`
    went on reading for nobody. It stops now, exit 0, with its final checkpoint."""
    import resource

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the worker starts

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    worker = subprocess.Popen(
        [*RUN, "--follow", "--max-rate", "20000", "--max-open-files", "2000"],
        cwd=workdir,
        env=worker_env(),
        stdout=write_end,
        stderr=subprocess.PIPE,
        preexec_fn=low_limit,
    )
    os.close(write_end)
    try:
        _, stderr = worker.communicate(timeout=15)
    finally:
        worker.kill()
        worker.communicate()
    assert worker.returncode == 0, stderr
    assert json.loads((workdir / "checkpoint.json").read_text())["offset"] < 200_000


def test_a_second_stop_signal_during_start_up_exits_at_once_with_its_number(
    workdir: Path,
) -> None:
    """SIGTERM and SIGINT while the worker starts (its early handler noted both): the second
    one exits at once with 128 + its number, as it does once the worker listens; it was
    dropped (exit 0). Pending together, the kernel hands over the lower number first."""
    for _ in range(3):
        worker = subprocess.Popen(
            [*RUN, "--max-rate", "1000"],
            cwd=workdir,
            env=worker_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        caught = time.monotonic() + 30
        while not _catches(worker.pid, signal.SIGTERM):  # the early handler is in place
            assert time.monotonic() < caught
            time.sleep(0.0005)
        worker.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=30)
        assert worker.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), stderr
        assert b"Traceback" not in stderr


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (`SigCgt` in its status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _console_log_on(stdout_is_a_terminal: bool, workdir: Path, **env: str) -> bytes:
    """What `run --log-format console` writes to its stdout: a pipe, or a terminal (a pty).
    NO_COLOR only if given here, whatever the caller's environment holds."""
    (workdir / "numbers.txt").write_bytes(b"1\n2\n")
    environment = {k: v for k, v in worker_env().items() if k != "NO_COLOR"} | env
    if not stdout_is_a_terminal:
        return cli(["run", "--log-format", "console"], workdir, environment).stdout.encode()
    reader, writer = pty.openpty()
    worker = subprocess.Popen(
        [*RUN, "--log-format", "console"],
        cwd=workdir,
        env=environment,
        stdout=writer,
        stderr=subprocess.DEVNULL,
    )
    os.close(writer)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the worker closed the terminal's last end
        while chunk := os.read(reader, 65536):
            shown += chunk
    os.close(reader)
    assert worker.wait(timeout=60) == 0
    return shown


@pytest.mark.parametrize(
    ("terminal", "env", "coloured"),
    [(True, {}, True), (True, {"NO_COLOR": "1"}, False), (False, {}, False)],
    ids=["terminal", "terminal-NO_COLOR", "pipe"],
)
def test_console_logs_are_coloured_only_on_a_terminal_without_no_color(
    workdir: Path, terminal: bool, env: dict[str, str], coloured: bool
) -> None:
    """Console logs read by a person at a terminal are coloured; NO_COLOR (no-color.org) turns
    that off, and a file or a pipe never gets escape codes."""
    shown = _console_log_on(terminal, workdir, **env)
    assert b"worker_stopped" in shown
    assert (b"\x1b[" in shown) is coloured


def test_a_stop_signal_while_the_logs_module_is_half_imported_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal can land while `service.telemetry.logs` is being imported, its functions not yet
    defined: the start-up handler notes the stop all the same, with no AttributeError (which
    ended a worker stopped during start-up with a traceback and exit 1)."""
    from types import ModuleType

    from service.cli import _remember_stop_signals

    stop_signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)
    before = {signum: signal.getsignal(signum) for signum in stop_signals}
    monkeypatch.setitem(sys.modules, "service.telemetry.logs", ModuleType("service.telemetry.logs"))
    received: list[int] = []
    try:
        _remember_stop_signals(received)
        signal.raise_signal(signal.SIGTERM)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert received == [signal.SIGTERM]


def test_sigterm_while_the_first_log_line_waits_for_a_full_pipe_is_a_graceful_stop(
    workdir: Path,
) -> None:
    """stdout is a pipe already full that nobody reads: the worker's first line waits in a
    write during start-up. SIGTERM then stops it gracefully after the reader's grace (exit 0),
    not by the shutdown deadline (exit 1, 5 s later)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    worker = subprocess.Popen(
        [*RUN, "--log-format", "json"],
        cwd=workdir,
        env=worker_env(),
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    try:
        waiting = time.monotonic() + 30
        while "poll" not in Path(f"/proc/{worker.pid}/wchan").read_text():
            assert time.monotonic() < waiting, "the worker never waited to write its log"
            time.sleep(0.05)
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        worker.kill()
        worker.communicate()
        os.close(read_end)
    assert worker.returncode == 0
    assert took < READER_GRACE + 1.5
    assert b"Traceback" not in stderr


def test_a_second_sigterm_exits_at_once_while_a_log_write_waits_for_the_reader(
    tmp_path: Path,
) -> None:
    """The loop is stuck writing a log line to a reader that does not read: a second SIGTERM
    ends the process at once (128 + 15), without waiting out the first one's grace for the
    reader, and the checkpoint on disk is whole."""
    worker = _worker_stuck_writing_its_log(tmp_path)
    try:
        first = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
        took = time.monotonic() - first
    finally:
        worker.kill()
    worker.communicate(timeout=30)
    assert worker.returncode == 128 + signal.SIGTERM
    assert took < READER_GRACE, f"took {took:.2f} s: the second signal waited for the reader"
    saved = tmp_path / "checkpoint.json"
    assert not saved.exists() or "files" in json.loads(saved.read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_a_line_cut_short_by_a_full_disk_never_runs_into_the_next(tmp_path: Path) -> None:
    """Logs to a file on a disk that fills mid-line: that line is left half written; once there
    is room again the next line starts on a line of its own, never glued to the half one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    script = f"""
import os, sys
from service.telemetry.logs import configure_logging
log = configure_logging("json", "info")
filler = {str(mount / "filler")!r}
with open(filler, "wb") as handle:
    handle.write(b"x" * 40_000)
for index in range(200):  # fills the disk, one line half written
    log.info("padding", index=index, text="y" * 300)
os.unlink(filler)  # room again
log.info("after_room", done=True)
"""
    try:
        with open(mount / "log.jsonl", "ab") as output:
            done = subprocess.run(
                [sys.executable, "-c", script], stdout=output, stderr=subprocess.PIPE, timeout=60
            )
        lines = (mount / "log.jsonl").read_bytes().splitlines()
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(lines[-1])["event"] == "after_room"
    whole = [line for line in lines[:-1] if line.endswith(b"}")]
    assert len(whole) >= len(lines) - 2  # every line whole but the one the disk cut


def test_a_long_line_cut_short_by_a_stalled_reader_never_runs_into_the_next(
    tmp_path: Path,
) -> None:
    """A line longer than the pipe holds, given up half written once a stop was asked for: the
    reader sees it end where it was cut, and the next line whole on a line of its own."""
    script = """
import sys
from service.telemetry import logs
logs.READER_GRACE = 0.2
log = logs.configure_logging("json", "info")
logs.stop_waiting_for_reader()
log.info("long", text="x" * 200_000)
print("given up", file=sys.stderr, flush=True)
sys.stdin.readline()
log.info("next")
"""
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    ) as writer:
        assert writer.stdin is not None
        assert writer.stdout is not None
        assert writer.stderr is not None
        try:
            assert writer.stderr.readline() == b"given up\n"
            cut = b""
            while select.select([writer.stdout], [], [], 0.2)[0]:
                cut += os.read(writer.stdout.fileno(), 1 << 16)
            writer.stdin.write(b"go\n")
            writer.stdin.flush()
            rest = writer.stdout.read()
            writer.wait(timeout=30)
        finally:
            writer.kill()
    assert writer.returncode == 0
    assert 0 < len(cut) < 200_000
    assert b"\n" not in cut
    lines = (cut + rest).split(b"\n")
    assert lines[0] == cut
    assert lines[-1] == b""
    assert [json.loads(line)["event"] for line in lines[1:-1]] == ["next"]


def test_run_with_stdout_closed_from_the_start_completes(workdir: Path) -> None:
    """`run >&-`: no traceback, the exact result, and no log line in the checkpoint, whose file
    would otherwise take stdout's number."""
    done = subprocess.run(
        ["bash", "-c", f"exec {sys.executable} -m service run --checkpoint-interval 0.05 >&-"],
        cwd=workdir,
        env=worker_env(),
        stderr=subprocess.PIPE,
        timeout=120,
    )
    assert done.returncode == 0
    assert done.stderr == b""
    json.loads((workdir / "checkpoint.json").read_text())
    _assert_resumes_to_the_exact_sum(workdir)


def _a_helper_thread_has_worked(worker: WorkerProcess, seconds: float) -> bool:
    """Wait until a thread of the worker other than its main one has run `seconds` of CPU."""
    pid = worker.pid()
    deadline = time.monotonic() + 30
    tick = os.sysconf("SC_CLK_TCK")
    while pid is not None and time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(task.name) != pid and int(fields[11]) + int(fields[12]) >= seconds * tick:
                return True
        time.sleep(0.05)
    return False


def test_sigterm_while_a_number_of_millions_of_digits_is_converted_saves_before_it(
    tmp_path: Path,
) -> None:
    """A legal record of millions of digits takes seconds to convert, in helper threads. SIGTERM
    meanwhile does not wait for it: exit 0 inside the shutdown timeout, with the final
    checkpoint at the line before it (nothing of it committed), and no watchdog line. The line
    before it ends in an earlier chunk, so it was committed on its own."""
    digits = CHUNK_BYTES + 600_000
    (tmp_path / "numbers.txt").write_bytes(b"1\n" + b"9" * digits + b"\n2\n")
    worker = WorkerProcess(["--max-line-bytes", "100000000", "--log-format", "json"], tmp_path)
    worker.wait_for("worker_started")
    assert _a_helper_thread_has_worked(worker, seconds=0.5)  # the conversion is under way
    sent = worker.signal(signal.SIGTERM)
    assert worker.finish(timeout=30) == 0
    assert worker.ended is not None
    assert worker.ended - sent < 5  # the default shutdown_timeout
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    assert (final["offset"], final["records"], final["sum"]) == (2, 1, 1)
    assert not worker.errors
    assert "Traceback" not in worker.stderr


def test_sigterm_while_one_step_of_a_conversion_holds_the_interpreter_exits_in_time(
    tmp_path: Path,
) -> None:
    """A record of 30,000,000 digits: one step of its conversion holds the interpreter for
    seconds, so no Python code runs, signal handlers included. SIGTERM still ends the process
    within shutdown_timeout (1 s): by the deadline's two lines, exit 1, the checkpoint on disk
    whole; or, had the stop got in between two steps, with the final checkpoint before it."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n" + b"9" * 30_000_000 + b"\n2\n")
    args = ["--max-line-bytes", "100000000", "--log-format", "json", "--shutdown-timeout", "1"]
    worker = WorkerProcess(args, tmp_path)
    worker.wait_for("worker_started")
    assert _a_helper_thread_has_worked(worker, seconds=0.5)  # the conversion is under way
    sent = worker.signal(signal.SIGTERM)
    code = worker.finish(timeout=60)
    assert worker.ended is not None
    assert worker.ended - sent < 1.8  # the timeout, and the deadline's 0.2 s to write its lines
    if code == 0:
        final = worker.wait_for("checkpoint_saved", reason="shutdown")
        assert (final["offset"], final["records"], final["sum"]) == (2, 1, 1)
    else:
        fatal, stopped = worker.events[-2:]
        assert "shutdown_timeout=1.0s" in fatal["message"]
        assert (stopped["event"], stopped["exit_code"], stopped["reason"]) == (
            "worker_stopped",
            1,
            "shutdown_timeout",
        )
    assert "Traceback" not in worker.stderr
    saved = tmp_path / "checkpoint.json"
    if saved.exists():  # whole, and nothing of the long line in it
        assert json.loads(saved.read_text())["offset"] <= 2


def test_a_long_number_on_the_last_line_without_a_newline_is_converted_off_the_loop(
    tmp_path: Path,
) -> None:
    """The input's last line, 4,000,000 digits and no '\\n': its conversion takes seconds, in
    helper threads like any long line's, so the loop beats on (timer saves) and SIGTERM stops
    the worker gracefully: exit 0, the final checkpoint before that line. On the loop's own
    thread it ended by the watchdog, exit 1, no checkpoint."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n" + b"7" * 4_000_000)
    args = ["--max-line-bytes", "10000000", "--checkpoint-interval", "0.1"]
    worker = WorkerProcess([*args, "--shutdown-timeout", "2"], tmp_path)
    worker.wait_for("checkpoint_saved", reason="timer", offset=2)
    assert _a_helper_thread_has_worked(worker, seconds=0.3)  # the conversion is under way
    worker.signal(signal.SIGTERM)
    assert worker.finish(timeout=60) == 0
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    assert (final["offset"], final["records"], final["sum"]) == (2, 1, 1)


# --- signals other than SIGTERM and SIGINT --------------------------------------------------


# SIGHUP (a closed terminal, an ssh drop), SIGQUIT (Ctrl+\\), SIGXCPU (the CPU-time limit's
# warning), SIGPWR (a failing power supply): each ends a process by default.
OTHER_STOP_SIGNALS = [signal.SIGHUP, signal.SIGQUIT, signal.SIGXCPU, signal.SIGPWR]


@pytest.mark.parametrize("signum", OTHER_STOP_SIGNALS, ids=lambda s: s.name)
def test_other_stop_signals_are_a_graceful_stop_like_sigterm(
    workdir: Path, signum: signal.Signals
) -> None:
    """Final checkpoint, exit 0, exact resume; `shutdown_requested` names the signal."""
    worker = WorkerProcess(["--max-rate", "50000", "--checkpoint-interval", "0.2"], workdir)
    worker.wait_for("checkpoint_saved", reason="timer")
    worker.signal(signum)
    assert worker.finish() == 0
    worker.wait_for("shutdown_requested", signal=signum.name)
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    assert json.loads((workdir / "checkpoint.json").read_text())["offset"] == final["offset"]
    _assert_resumes_to_the_exact_sum(workdir)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name)
def test_other_stop_signals_count_as_a_stop_at_start_up(
    workdir: Path, signum: signal.Signals
) -> None:
    """Such a signal as soon as the worker catches it still stops it gracefully with exit 0."""
    worker = WorkerProcess(["--max-rate", "50000"], workdir)
    assert worker.wait_catching(signum)
    worker.signal(signum)
    assert worker.finish() == 0
    assert worker.noise == []


# Signals other programs give a meaning (reopen logs, reload, dump, timers, profilers): the
# worker has none of these, and each would end a process by default.
NO_MEANING_SIGNALS = [
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGSTKFLT,
    signal.SIGRTMIN,
    signal.SIGRTMIN + 3,
    signal.SIGRTMAX,
]


def test_signals_with_no_meaning_to_the_worker_are_ignored_and_said_once(workdir: Path) -> None:
    """`kill -USR1` (a log-rotation script's habit) and the like: the worker goes on reading,
    says once per signal that it ignored it, and still stops gracefully and resumes exactly."""
    worker = WorkerProcess(["--max-rate", "50000", "--checkpoint-interval", "0.2"], workdir)
    before = worker.wait_for("checkpoint_saved", reason="timer")
    for _ in range(2):
        for signum in NO_MEANING_SIGNALS:
            worker.signal(signum)
    last = worker.wait_for("signal_ignored", signal="SIGRTMAX")
    after = worker.wait_for(
        "checkpoint_saved",
        reason="timer",
        timestamp=lambda t: t > last["timestamp"],
    )
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.tail()
    ignored = [e["signal"] for e in worker.events if e["event"] == "signal_ignored"]
    named = ["SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGSTKFLT"]
    assert sorted(ignored) == sorted([*named, "SIGRTMIN", "SIGRTMIN+3", "SIGRTMAX"])
    assert after["offset"] > before["offset"]  # it went on reading
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    assert json.loads((workdir / "checkpoint.json").read_text())["offset"] == final["offset"]
    _assert_resumes_to_the_exact_sum(workdir)


def test_a_signal_with_no_meaning_at_start_up_changes_nothing(workdir: Path) -> None:
    """Sent the instant the worker takes it over, before it listens: not a stop, not a death."""
    worker = WorkerProcess(["--max-rate", "50000", "--checkpoint-interval", "0.2"], workdir)
    assert worker.wait_catching(signal.SIGUSR1)
    worker.signal(signal.SIGUSR1)
    worker.wait_for("checkpoint_saved", reason="timer")
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.tail()
    assert worker.noise == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGHUP, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGHUP),
        (signal.SIGQUIT, signal.SIGQUIT),
    ],
)
def test_a_second_stop_signal_with_sighup_exits_at_once(
    workdir: Path, first: signal.Signals, second: signal.Signals
) -> None:
    """SIGHUP is a stop signal like the others: a second one during shutdown exits 128 + its
    number at once (or 0 if the shutdown had finished), and the checkpoint is whole."""
    data = (workdir / "numbers.txt").read_bytes()
    for _ in range(3):
        worker = WorkerProcess(["--max-rate", "100000", "--checkpoint-interval", "0.1"], workdir)
        worker.wait_for("checkpoint_saved", reason="timer")
        worker.signal(first)
        worker.wait_for("shutdown_requested")
        worker.signal(second)
        code = worker.finish()
        assert code in (0, 128 + second)
        last = worker.events[-1]
        assert (last["event"], last["exit_code"]) == ("worker_stopped", code)
        saved = json.loads((workdir / "checkpoint.json").read_text())
        assert saved["sum"] == expected_of(data[: saved["offset"]]).sum


def test_sigxcpu_repeated_by_the_kernel_is_not_a_second_stop(workdir: Path) -> None:
    """Past its CPU-time limit a process gets SIGXCPU each second until the hard limit: the
    repeats during the shutdown the first one began leave it to finish, final checkpoint and
    exit 0."""
    data = (workdir / "numbers.txt").read_bytes()
    worker = WorkerProcess(["--max-rate", "100000", "--checkpoint-interval", "0.1"], workdir)
    worker.wait_for("checkpoint_saved", reason="timer")
    worker.signal(signal.SIGXCPU)
    worker.wait_for("shutdown_requested", signal="SIGXCPU")
    worker.signal(signal.SIGXCPU)
    worker.signal(signal.SIGXCPU)
    assert worker.finish() == 0, worker.tail()
    saved = [e for e in worker.events if e["event"] == "checkpoint_saved"][-1]
    assert saved["reason"] == "shutdown"
    assert saved["sum"] == expected_of(data[: saved["offset"]]).sum


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_a_stop_signal_after_completion_changes_nothing(tmp_path: Path, signum: int) -> None:
    """A signal that comes while a worker that finished its input is exiting (`docker compose
    stop` racing the end) neither kills it nor changes its exit: 0, and the result stands."""
    data = _numbers(2000)
    (tmp_path / "numbers.txt").write_bytes(data)
    for _ in range(5):
        for leftover in ("checkpoint.json", "result.json"):
            (tmp_path / leftover).unlink(missing_ok=True)
        worker = WorkerProcess([], tmp_path)
        worker.wait_for("completed")
        worker.signal(signum)
        assert worker.finish() == 0, worker.tail()
        assert worker.noise == []
        result = json.loads((tmp_path / "result.json").read_text())
        assert int(result["sum"]) == expected_of(data).sum


# --- HTTP clients ------------------------------------------------------------------------------


def _hang_up(address: tuple[str, int], *, reset: bool) -> None:
    """Ask for /metrics and go away before the answer: closed, or reset (RST)."""
    client = socket.create_connection(address, timeout=5)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    if reset:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def test_scrapers_that_hang_up_or_reset_never_hurt_the_worker(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """Clients closing or resetting before the answer: the worker runs on, logs no traceback."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    address = _address(worker)
    worker.wait_for("checkpoint_saved", reason="timer")
    for index in range(40):
        _hang_up(address, reset=index % 2 == 1)
    status, _ = get(f"http://{address[0]}:{address[1]}/healthz")
    assert status == 200
    last = worker.named("checkpoint_saved")[-1]["offset"]
    worker.wait_for("checkpoint_saved", offset=lambda offset: offset > last)
    _stop_cleanly(worker)
    _assert_resumes_to_the_exact_sum(workdir)


def test_a_probe_timing_out_while_the_worker_is_paused_does_not_end_it(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """SIGSTOP (a throttled container), probes that give up, SIGCONT: the worker runs on."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    host, port = _address(worker)
    worker.wait_for("checkpoint_saved", reason="timer")
    worker.signal(signal.SIGSTOP)
    for _ in range(4):
        with pytest.raises(TimeoutError):  # a timeout: nobody answers a stopped process
            urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=0.3)
    worker.signal(signal.SIGCONT)
    last = worker.named("checkpoint_saved")[-1]["offset"]
    worker.wait_for("checkpoint_saved", offset=lambda offset: offset > last)
    assert get(f"http://{host}:{port}/healthz")[0] == 200
    _stop_cleanly(worker)


def test_head_is_answered_without_a_body(workdir: Path, running: list[WorkerProcess]) -> None:
    """HEAD on each path: the GET's status and headers, no body (not 501)."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    host, port = _address(worker)
    worker.wait_for("checkpoint_saved", reason="timer")
    for path in ("/metrics", "/healthz", "/readyz"):
        request = urllib.request.Request(f"http://{host}:{port}{path}", method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) > 0
            assert response.read() == b""
    _stop_cleanly(worker)


def _exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send raw bytes as one client, and read the answer until the worker closes."""
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


_ODD_REQUESTS = {
    "HTTP/1.0 with headers": (b"GET /readyz HTTP/1.0\r\nHost: x\r\nAccept: */*\r\n\r\n", b"200"),
    "bare LF, a query": (b"GET /healthz?probe=1 HTTP/1.1\n\n", b"200"),
    "empty lines before the request line": (b"\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n", b"200"),
    "a flood of empty lines": (b"\r\n" * 5000 + b"GET /healthz HTTP/1.1\r\n\r\n", b"400"),
    "POST": (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    "unknown path": (b"GET /nothing-here HTTP/1.1\r\n\r\n", b"404"),
    "absolute-form": (b"GET http://127.0.0.1:9/healthz?x HTTP/1.1\r\nHost: h\r\n\r\n", b"200"),
    "absolute-form, other path": (b"GET HTTP://h/nothing-here HTTP/1.1\r\n\r\n", b"404"),
    "absolute-form, a query only": (b"GET http://h?x=/metrics HTTP/1.1\r\n\r\n", b"404"),
    "binary garbage": (b"\x00\xff garbage\r\n\r\n", b"400"),
    "no version": (b"GET /metrics\r\n\r\n", b"400"),
    "no version, nothing after it (HTTP/0.9)": (b"GET /metrics\r\n", b"400"),
    "HTTP/9.9, nothing after it": (b"GET /metrics HTTP/9.9\r\n", b"505"),
    "a version that is no number": (b"GET /metrics HTTP/x.y\r\n\r\n", b"400"),
    "HTTP/9.9": (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
    "a header line without a colon": (b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n", b"400"),
    "10 kB target": (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    "101 headers": (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", b"431"),
    "10 kB header": (b"GET /metrics HTTP/1.1\r\nX-A: " + b"b" * 10_000 + b"\r\n\r\n", b"431"),
}


def test_every_request_gets_one_status_line_and_the_connection_closed(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """Odd and malformed requests: each gets one answer with the right status and a body as
    long as its Content-Length says, then the connection is closed; the worker runs on."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    address = _address(worker)
    worker.wait_for("checkpoint_saved", reason="timer")
    for name, (request, status) in _ODD_REQUESTS.items():
        answer = _exchange(address, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[:2] == [b"HTTP/1.1", status], (name, answer[:200])
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert length is not None, name
        assert int(length.group(1)) == len(body), name
    assert get(f"http://{address[0]}:{address[1]}/healthz")[0] == 200
    _stop_cleanly(worker)


def test_a_burst_of_500_concurrent_scrapes_is_answered(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """500 scrapes at once, each with a 10 s timeout: every one is answered with 200."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    host, port = _address(worker)
    worker.wait_for("checkpoint_saved", reason="timer")
    statuses: list[int | str] = []
    start = threading.Barrier(500)

    def scrape() -> None:
        start.wait()
        try:
            statuses.append(get(f"http://{host}:{port}/metrics")[0])
        except OSError as error:
            statuses.append(repr(error))

    clients = [threading.Thread(target=scrape) for _ in range(500)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert statuses == [200] * 500
    _stop_cleanly(worker)


def test_a_silent_client_is_dropped_after_the_read_timeout(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """A connection that never sends its request is closed by the worker, which runs on."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    address = _address(worker)
    with socket.create_connection(address, timeout=READ_TIMEOUT + 10) as silent:
        assert silent.recv(1) == b""  # closed by the worker, not by our own timeout
    assert get(f"http://{address[0]}:{address[1]}/healthz")[0] == 200
    _stop_cleanly(worker)


def test_a_client_trickling_its_request_is_dropped_after_the_read_timeout(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """A byte of the request every second never completes it: the worker closes the connection
    `READ_TIMEOUT` after the first byte, however long each byte keeps it alive."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    address = _address(worker)
    with socket.create_connection(address, timeout=READ_TIMEOUT + 10) as trickle:
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 4:
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            readable, _, _ = select.select([trickle], [], [], 1.0)
            if readable:
                closed = trickle.recv(1) == b""
                break
        assert closed, "the connection was still open after the whole trickle"
        assert time.monotonic() - started < READ_TIMEOUT + 3
    assert get(f"http://{address[0]}:{address[1]}/healthz")[0] == 200
    _stop_cleanly(worker)


@pytest.mark.parametrize("sent", [b"", b"G", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"])
def test_idle_connections_beyond_every_slot_cannot_starve_a_probe(
    workdir: Path, running: list[WorkerProcess], sent: bytes
) -> None:
    """Three times more connections than the endpoint serves at once, silent or stopped part
    way through their request (a slowloris): a probe still gets its answer at once, not after
    they time out."""
    worker = _start(running, workdir, "--follow", "--max-rate", "20000")
    address = _address(worker)
    silent = [socket.create_connection(address, timeout=10) for _ in range(3 * MAX_CONNECTIONS)]
    for connection in silent:
        connection.sendall(sent)
    try:
        for _ in range(5):
            started = time.monotonic()
            assert get(f"http://{address[0]}:{address[1]}/healthz")[0] == 200
            assert time.monotonic() - started < READ_TIMEOUT / 2
    finally:
        for connection in silent:
            connection.close()
    _stop_cleanly(worker)


def test_idle_connections_cannot_starve_a_probe_when_one_slot_is_left(
    workdir: Path, running: list[WorkerProcess]
) -> None:
    """Under `ulimit -n 16` the endpoint serves one connection at a time. Three silent
    connections, accepted one after another once the kernel hands them over: each probe for
    ten seconds is still answered at once, never after a silent one's timeout (the handler of
    a connection just accepted may not yet have said that it waits for its request)."""
    # Unmeasured: coverage's own files would take descriptors the limit leaves so few of.
    env = unmeasured(worker_env(WORKER_METRICS_ADDRESS="127.0.0.1:0"))
    args = ["--follow", "--max-rate", "20000"]
    worker = WorkerProcess(args, workdir, env, prefix=(*_WITH_ULIMIT, "16"))
    running.append(worker)
    address = _address(worker)
    silent = [socket.create_connection(address, timeout=10) for _ in range(3)]
    try:
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert get(f"http://{address[0]}:{address[1]}/healthz")[0] == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.5)
        assert slowest < 1.0
    finally:
        for connection in silent:
            connection.close()
    _stop_cleanly(worker)


def test_probes_are_answered_with_descriptors_past_1024(tmp_path: Path) -> None:
    """1,100 followed files held open: the endpoint's sockets get descriptors past select()'s
    FD_SETSIZE, and probes are still answered."""
    data = tmp_path / "data"
    data.mkdir()
    for index in range(1100):
        (data / f"{index:04}.txt").write_bytes(b"%d\n" % index)
    env = worker_env(WORKER_METRICS_ADDRESS="127.0.0.1:0", WORKER_INPUT="data/*.txt")
    worker = WorkerProcess(["--follow", "--max-open-files", "1500"], tmp_path, env)
    try:
        address = _address(worker)
        worker.wait_for("caught_up", timeout=60)
        assert len(os.listdir(f"/proc/{worker.process.pid}/fd")) > 1100
        for path in ("/healthz", "/readyz", "/metrics"):
            assert get(f"http://{address[0]}:{address[1]}{path}")[0] == 200
        _stop_cleanly(worker)
    finally:
        worker.kill()


# --- files given by the user -------------------------------------------------------------------


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command printed (stderr or a fatal_error event), no traceback."""
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    errors = []
    for line in lines:
        if line.startswith("{"):
            event = json.loads(line)
            if event["level"] == "error":
                errors.append(event["message"])
        else:
            errors.append(line)
    assert len(errors) == 1, lines
    return str(errors[0])


@pytest.mark.parametrize("kind", ["device", "fifo", "directory", "100 MB file"])
def test_a_config_that_is_not_a_small_regular_file_is_one_line_and_exit_2(
    tmp_path: Path, kind: str
) -> None:
    """--config /dev/zero, a FIFO, a directory or a huge file: refused at once, never read."""
    config = tmp_path / "worker.toml"
    if kind == "device":
        config = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(config)
    elif kind == "directory":
        config.mkdir()
    else:
        with config.open("wb") as handle:
            handle.truncate(100 << 20)
    done = cli(["run", "--config", str(config)], tmp_path, timeout=30)
    assert done.returncode == 2
    assert str(config) in _one_error_line(done)
    health = cli(["healthcheck", "--config", str(config)], tmp_path, timeout=30)
    assert health.returncode == 2  # refused as by `run`, and never waited on
    assert str(config) in health.stderr


@pytest.mark.parametrize("kind", ["fifo", "300 MB file"])
def test_a_checkpoint_that_is_not_a_bounded_regular_file_is_refused(
    workdir: Path, kind: str
) -> None:
    """A checkpoint that is a FIFO or far too large: one error line, exit 1, left untouched."""
    checkpoint = workdir / "checkpoint.json"
    if kind == "fifo":
        os.mkfifo(checkpoint)
    else:
        with checkpoint.open("wb") as handle:
            handle.truncate(300 << 20)
    before = checkpoint.lstat()
    for command in (["run"], ["status"]):
        done = cli(command, workdir, timeout=30)
        assert done.returncode == 1
        assert "checkpoint" in _one_error_line(done)
    after = checkpoint.lstat()
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )


def test_max_line_bytes_above_1_gib_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """--max-line-bytes 99999999999999999999: exit 2 with one line naming the setting."""
    done = cli(["run", "--max-line-bytes", "99999999999999999999"], tmp_path)
    assert done.returncode == 2
    assert "max_line_bytes" in _one_error_line(done)


# --- secrets -----------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55word"


@pytest.mark.parametrize(
    ("config", "env"),
    [
        (f"kafka_sasl_password = [{SECRET!r}]\n", {}),
        ("", {"WORKER_KAFKA_SASL_PASSWORD": SECRET, "WORKER_KAFKA_SASL_PASSWORD_FILE": "pw"}),
        ("", {"WORKER_KAFKA_SASL_PASSWORD_FILE": "missing"}),
        ("", {"WORKER_KAFKA_SASL_PASSWORD_FILE": SECRET}),  # the secret given to its file's twin
        (f"kafka_sasl_password_file = {SECRET!r}\n", {}),
    ],
)
def test_a_bad_secret_names_the_setting_never_its_value(
    tmp_path: Path, config: str, env: dict[str, str]
) -> None:
    """A malformed, doubly given or unreadable password: exit 2, the setting named, no value."""
    (tmp_path / "pw").write_text(SECRET + "\n")
    (tmp_path / "worker.toml").write_text(config)
    done = cli(["run", "--config", "worker.toml"], tmp_path, worker_env(**env))
    assert done.returncode == 2
    line = _one_error_line(done)
    assert "kafka_sasl_password" in line
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["run", f"--kafka-sasl-pass={SECRET}"],  # an abbreviation that matches two flags
        ["run", f"--kafka-sasl-passwd={SECRET}"],  # misspelt, the value attached
        ["run", "--kafka-sasl-pasword", SECRET, "--follow"],  # misspelt, the value after it
        ["--kafka-sasl-password", SECRET, "run"],  # before the command
        [f"--kafka-sasl-password:{SECRET}", "run"],  # before it, a colon for the equals sign
        [f"--kafka-sasl-password {SECRET}", "run"],  # before it, one quoted word
        ["healthcheck", f"--kafka-sasl-pass={SECRET}"],
        ["run", f"--kafka-sasl-password:{SECRET}"],  # a colon typed for the equals sign
        ["run", f"--kafka-sasl-password {SECRET}"],  # one quoted word
        ["status", "--kafka-sasl-pasword", f"-{SECRET}!tail"],  # a value that looks like a flag
        ["status", "--kafka-sasl-pasword", f"--{SECRET}=x"],
        ["run", f"--kafka-sasl-password_{SECRET}"],  # glued by a character a flag may hold
        ["run", f"--kafka-sasl-password-{SECRET}"],
        ["run", f"--kafka-sasl-password{SECRET}"],
        [f"--kafka-sasl-password{SECRET}", "status"],  # glued, before the command
        ["run", f"--kafka-sasl-pass{SECRET}"],  # glued to an abbreviation
        ["run", f"--Kafka-sasl-password{SECRET}"],  # another case
        ["run", f"---kafka-sasl-password{SECRET}"],  # other dashes
        ["run", f"-kafka-sasl-password{SECRET}"],
    ],
)
def test_a_mistyped_flag_never_echoes_a_secret_given_with_it(
    tmp_path: Path, argv: list[str]
) -> None:
    """argparse repeats what it cannot take: one line, exit 2, the flag named, no value."""
    done = cli(argv, tmp_path)
    assert done.returncode == 2
    line = _one_error_line(done)
    assert "kafka-sasl-pas" in line.lower()
    assert SECRET not in done.stdout + done.stderr


def test_a_mistyped_command_line_still_names_what_is_wrong(tmp_path: Path) -> None:
    """A stray word after a flag that takes no value, and a bad count, are shown as typed."""
    stray = cli(["run", "--follow", "numbers.txt"], tmp_path)
    assert stray.returncode == 2
    assert "unrecognized arguments: numbers.txt" in _one_error_line(stray)
    count = cli(["generate", "--count", "ten"], tmp_path)
    assert count.returncode == 2
    assert "'ten'" in _one_error_line(count)
    # A command's own flags: a later word that is a command's name (`run`) changes nothing.
    named_run = cli(["generate", "--count", "ten", "--output", "run"], tmp_path)
    assert "argument --count: expected a whole number, got 'ten'" in _one_error_line(named_run)


def test_a_traceback_in_the_log_never_shows_local_variables(tmp_path: Path) -> None:
    """An unexpected error logged with its traceback: the frames are there, their locals not."""
    script = f"""
from service.telemetry.logs import configure_logging
log = configure_logging("json", "info")
def connect():
    password = {SECRET!r}
    raise RuntimeError("broker refused")
try:
    connect()
except RuntimeError as error:
    log.error("fatal_error", message="unexpected", exc_info=error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    [event] = [json.loads(line) for line in done.stdout.splitlines()]
    assert "connect" in json.dumps(event["exception"])
    assert SECRET not in done.stdout + done.stderr


# --- descriptors -------------------------------------------------------------------------------

# Execs its arguments with the open-files limit given first: a real `ulimit -n`, same process.
_WITH_ULIMIT = (
    sys.executable,
    "-c",
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execvp(sys.argv[2], sys.argv[2:])",
)


@pytest.mark.parametrize("limit", ["5", "6", "8"])
def test_too_few_descriptors_for_the_modules_themselves_is_one_line(
    workdir: Path, limit: str
) -> None:
    """`ulimit -n` so low that a module of the worker cannot be opened to be imported: one
    line naming the cause and exit 1, not a traceback."""
    done = subprocess.run(
        [*_WITH_ULIMIT, limit, *RUN, "--metrics-address", "127.0.0.1:0"],
        cwd=workdir,
        env=unmeasured(worker_env()),  # coverage would need descriptors of its own first
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("Too many open files; raise the open-files limit")


def test_a_limit_too_low_for_the_worker_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    """Under `ulimit -n 12` the modules load, but a glob of files would fail with EMFILE once
    read for a while: the worker refuses at start, in one line naming the limit, exit 1."""
    data = tmp_path / "data"
    data.mkdir()
    for index in range(50):
        (data / f"{index}.txt").write_bytes(b"1\n")
    done = subprocess.run(
        [*_WITH_ULIMIT, "12", *RUN, "--input", "data/*.txt"],
        cwd=tmp_path,
        env=unmeasured(worker_env()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    events = events_of(done.stdout)
    errors = [e for e in events if e["level"] == "error"]
    assert [e["event"] for e in errors] == ["fatal_error"]
    assert (
        f"limit (ulimit -n) is 12: the worker needs at least {LOWEST_LIMIT}" in errors[0]["message"]
    )
    assert events[-1]["event"] == "worker_stopped"
    assert not (tmp_path / "checkpoint.json").exists()
    assert "Traceback" not in done.stderr


def test_idle_connections_under_a_low_ulimit_cannot_starve_the_checkpoint(tmp_path: Path) -> None:
    """150 idle connections to the metrics port under `ulimit -n 128`, reading 300 files: the
    worker warns once, keeps saving, and SIGTERM still exits 0 after its final checkpoint."""
    data = tmp_path / "data"
    data.mkdir()
    everything = b""
    for index in range(300):
        numbers = b"".join(f"{index * 1000 + k}\n".encode() for k in range(200))
        (data / f"{index:03}.txt").write_bytes(numbers)
        everything += numbers
    env = worker_env(WORKER_METRICS_ADDRESS="127.0.0.1:0", WORKER_INPUT="data/*.txt")
    args = ["--follow", "--checkpoint-interval", "0.2", "--max-rate", "20000"]
    worker = WorkerProcess(args, tmp_path, env, prefix=(*_WITH_ULIMIT, "128"))
    try:
        address = _address(worker)
        [warning] = worker.named("descriptors_reserved")
        assert 0 < warning["max_open_files"] < 128
        idle = [socket.create_connection(address, timeout=10) for _ in range(150)]
        last = worker.wait_for("checkpoint_saved")["offset"]
        worker.wait_for("checkpoint_saved", offset=lambda offset: offset > last)
        _stop_cleanly(worker)
        for connection in idle:
            connection.close()
        assert worker.errors == []
    finally:
        worker.kill()
    done = cli(["run", "--no-follow"], tmp_path, worker_env(WORKER_INPUT="data/*.txt"))
    assert done.returncode == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sum"] == expected_of(everything).sum


# --- names and series --------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_shown_escaped_everywhere_and_kept_exact(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """A name with a byte that is not UTF-8: /metrics still parses, the log, /metrics and
    `status` show the same escaped name, and the checkpoint keeps the exact bytes."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_bytes(b"10\n")
    with open(os.fsencode(data) + b"/\xffbad.txt", "wb") as handle:
        handle.write(b"1\n2\n3\n")
    escaped = "data/\\xffbad.txt"
    # Its escape typed as text, and a terminal escape sequence: each shown its own way.
    (data / "\\xffbad.txt").write_bytes(b"4\n")
    typed = "data/\\\\xffbad.txt"
    (data / "red\x1b[31m.txt").write_bytes(b"5\n")
    red = "data/red\\x1b[31m.txt"
    # U+0085 (a control character, in UTF-8) and the byte 0x85 (not UTF-8): two names, two shows.
    (data / "\x85nel.txt").write_bytes(b"6\n")
    with open(os.fsencode(data) + b"/\x85nel.txt", "wb") as handle:
        handle.write(b"7\n")
    control, raw = "data/\\u0085nel.txt", "data/\\x85nel.txt"
    env = {"WORKER_INPUT": "data/*.txt", "WORKER_METRICS_ADDRESS": "127.0.0.1:0"}
    worker = WorkerProcess(["--follow"], tmp_path, worker_env(**env))
    running.append(worker)
    host, port = _address(worker)
    worker.wait_for("caught_up")
    assert worker.named("file_discovered", path=escaped)
    status, text = get(f"http://{host}:{port}/metrics")
    assert status == 200
    positions = by_label(samples_of(text), "checkpoint_worker_position", "partition")
    assert positions == {"data/good.txt": 3, escaped: 6, typed: 2, red: 2, control: 2, raw: 2}
    _stop_cleanly(worker)
    shown = cli(["status", "--json"], tmp_path, worker_env(**env))
    assert sorted(entry["path"] for entry in json.loads(shown.stdout)["files"]) == sorted(
        [escaped, "data/good.txt", typed, red, control, raw]
    )
    for_people = cli(["status"], tmp_path, worker_env(**env)).stdout
    assert red in for_people
    assert "\x1b" not in for_people
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    paths = {os.fsencode(entry["path"]) for entry in saved["files"]}
    assert paths == {
        b"data/good.txt",
        b"data/\xffbad.txt",
        b"data/\\xffbad.txt",
        b"data/red\x1b[31m.txt",
        b"data/\xc2\x85nel.txt",
        b"data/\x85nel.txt",
    }


def test_reset_names_the_files_it_removed_escaped_once(tmp_path: Path) -> None:
    """`reset` logs what it removed as every other event shows a name: escaped, valid JSON."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n")
    checkpoint, result = os.fsdecode(b"c\xffk\nx.json"), os.fsdecode(b"r\xff.json")
    files = ["--checkpoint", checkpoint, "--result", result]
    assert cli(["run", *files], tmp_path).returncode == 0
    done = cli(["reset", *files, "--log-format", "json"], tmp_path)
    assert done.returncode == 0
    (reset,) = [e for e in events_of(done.stdout) if e["event"] == "reset"]
    assert sorted(reset["removed"]) == ["c\\xffk\\x0ax.json", "r\\xff.json"]
    assert not os.path.exists(tmp_path / checkpoint)
    assert not os.path.exists(tmp_path / result)


def test_console_logs_show_a_name_escaped_once_as_status_does(tmp_path: Path) -> None:
    """Console logs quote a name with a space, and escape it no more than `status` does: the
    byte 0xFF and the text `\\xff` stay two names there too."""
    data = tmp_path / "data"
    data.mkdir()
    with open(os.fsencode(data) + b"/\xffa b.txt", "wb") as handle:
        handle.write(b"1\n")
    (data / "\\xffa b.txt").write_bytes(b"2\n")
    (data / "plain.txt").write_bytes(b"3\n")
    args = ["--input", "data/*.txt", "--log-format", "console"]
    logged = cli(["run", *args], tmp_path, worker_env(NO_COLOR="1"))
    assert logged.returncode == 0
    discovered = [line for line in logged.stdout.splitlines() if "file_discovered" in line]
    shown = [line.split("path=", 1)[1].split(" size=")[0] for line in discovered]
    assert sorted(shown) == ["'data/\\\\xffa b.txt'", "'data/\\xffa b.txt'", "data/plain.txt"]
    for_people = cli(["status", *args[:2]], tmp_path).stdout
    assert "data/\\xffa b.txt " in for_people
    assert "data/\\\\xffa b.txt " in for_people


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        (b"x\xff\xfe.txt", "x\\xff\\xfe.txt"),
        (b"a\nb.txt", "a\\x0ab.txt"),
        ("n\u202etxt.exe".encode(), "n\\u202etxt.exe"),  # shows as `nexe.txt` unescaped
    ],
    ids=["not-utf8", "newline", "right-to-left-override"],
)
def test_a_plain_input_is_shown_with_the_one_escaping_everywhere(
    tmp_path: Path, name: bytes, escaped: str
) -> None:
    """One odd name given as the input: the log's `input` and `path`, `result.json` and
    `status` (JSON and for people) all show it escaped the same way, never raw bytes."""
    with open(os.fsencode(tmp_path) + b"/" + name, "wb") as handle:
        handle.write(b"1\nbad\n")
    env = worker_env(WORKER_INPUT=os.fsdecode(name))
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 0
    events = [json.loads(line) for line in done.stdout.splitlines()]
    [started] = [e for e in events if e["event"] == "worker_started"]
    [bad] = [e for e in events if e["event"] == "bad_record"]
    assert (started["input"], bad["path"]) == (escaped, escaped)
    assert json.loads((tmp_path / "result.json").read_text())["input"] == escaped
    as_json = json.loads(cli(["status", "--json"], tmp_path, env).stdout)
    assert as_json["input"] == escaped
    for_people = cli(["status"], tmp_path, env).stdout
    [row] = [line for line in for_people.splitlines() if line.startswith("input")]
    assert row.split()[1] == escaped
    assert not set(for_people) & {chr(c) for c in [*range(0x20), 0x7F]} - {"\n"}
    assert "\udcff" not in done.stdout + for_people


def test_per_file_series_are_capped_and_the_rest_folded_into_one(
    tmp_path: Path, running: list[WorkerProcess]
) -> None:
    """More files than MAX_PARTITION_SERIES: that many series, plus one `_other` holding the sum."""
    data = tmp_path / "data"
    data.mkdir()
    count = MAX_PARTITION_SERIES + 100
    sizes = {}
    for index in range(count):
        name = f"data/{index:04}.txt"
        (tmp_path / name).write_bytes(b"7\n" * (index % 5 + 1))
        sizes[name] = 2 * (index % 5 + 1)
    env = {"WORKER_INPUT": "data/*.txt", "WORKER_METRICS_ADDRESS": "127.0.0.1:0"}
    worker = WorkerProcess(["--follow"], tmp_path, worker_env(**env))
    running.append(worker)
    host, port = _address(worker)
    worker.wait_for("caught_up", records=sum(sizes.values()) // 2)
    status, text = get(f"http://{host}:{port}/metrics")
    assert status == 200
    positions = by_label(samples_of(text), "checkpoint_worker_position", "partition")
    first = sorted(sizes)[:MAX_PARTITION_SERIES]
    assert positions == {
        **{name: sizes[name] for name in first},
        OTHER_PARTITIONS: sum(sizes[name] for name in sorted(sizes)[MAX_PARTITION_SERIES:]),
    }
    _stop_cleanly(worker)


# --- the cost of a line ------------------------------------------------------------------------


def _decimal_total(lines: list[str]) -> str:
    """The exact sum of integer lines by the decimal module: no int()/str() of long numbers."""
    context = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, traps=[decimal.Inexact])
    total = decimal.Decimal(0)
    for line in lines:
        total = context.add(total, decimal.Decimal(line.strip()))
    return str(total)


def test_a_line_of_a_million_digits_is_summed_exactly(tmp_path: Path) -> None:
    """Numbers of about a million digits, signed and padded: the exact sum in the result, the
    checkpoint and the log (compared as text with an oracle of the decimal module)."""
    rng = random.Random(SEED)
    big = "".join(rng.choice("0123456789") for _ in range(1_000_000))
    other = "9" + "".join(rng.choice("0123456789") for _ in range(999_000))
    lines = ["17", f"  +{big} ", f"-{other}\r", "42"]
    (tmp_path / "numbers.txt").write_text("".join(f"{line}\n" for line in lines))
    done = cli(["run", "--max-line-bytes", "2000000"], tmp_path)
    assert done.returncode == 0
    expected = _decimal_total([line.replace("\r", "") for line in lines])
    assert len(expected) >= 999_999  # the oracle really summed the long ones
    sum_field = re.compile(r'"sum": (-?\d+)')
    for saved in ("result.json", "checkpoint.json"):  # the totals come first
        assert sum_field.findall((tmp_path / saved).read_text())[0] == expected
    completed = next(line for line in done.stdout.splitlines() if '"completed"' in line)
    assert sum_field.findall(completed) == [expected]
    status = cli(["status", "--json"], tmp_path)
    assert sum_field.findall(status.stdout)[0] == expected


def test_max_line_bytes_is_exit_2_above_its_bound_in_every_source(tmp_path: Path) -> None:
    """1 GiB is accepted; one byte more, from a flag, the environment or a file, is exit 2."""
    (tmp_path / "worker.toml").write_text(f"max_line_bytes = {MAX_LINE_BYTES + 1}\n")
    over = str(MAX_LINE_BYTES + 1)
    for args, env in [
        (["--max-line-bytes", over], {}),
        ([], {"WORKER_MAX_LINE_BYTES": over}),
        (["--config", "worker.toml"], {}),
    ]:
        done = cli(["status", *args], tmp_path, worker_env(**env))
        assert done.returncode == 2
        assert "max_line_bytes" in _one_error_line(done)
    assert cli(["status", "--max-line-bytes", str(MAX_LINE_BYTES)], tmp_path).returncode == 0


@pytest.mark.parametrize("command", ["run", "status"])
def test_the_garbage_collector_is_on_once_a_command_is_under_way(
    tmp_path: Path, command: str
) -> None:
    """Start-up runs with the collector off, for speed; a command that left it off would let
    reference cycles pile up for as long as it runs."""
    (tmp_path / "numbers.txt").write_bytes(_numbers(1000))
    at_exit = (
        "import gc, os, sys\n"
        "exit_now = os._exit\n"
        "def report(code):\n"
        "    print('collector on:', gc.isenabled(), file=sys.stderr, flush=True)\n"
        "    exit_now(code)\n"
        "os._exit = report\n"
        "from service.cli import console\n"
        "console()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", at_exit, command, "--input", "numbers.txt"],
        cwd=tmp_path,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "collector on: True" in done.stderr
