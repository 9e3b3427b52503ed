"""The progress line in a real terminal: a worker under tmux, its screen read with capture-pane.

The expectations about the screen are kept here, next to the runs that make it: the progress line
is the bottom line while the worker runs, log lines print above it, and nothing of it is left
when the worker exits, on its own or by Ctrl+C. JSON logs on a terminal and console logs that
are not on one are left alone.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import cli, events_of, worker_env

EXIT_STATUS = "[worker exited]"
COUNT = 120_000
NUMBERS = b"".join(f"{n * 7919 % 1_000_003}\n".encode() for n in range(COUNT))
PROGRESS = re.compile(
    r"(\d+\.\d)%  [\d,]+ records/s  ETA (--:--|\d\d:\d\d)  sum \d+  "
    r"partitions: 1 reading, 0 caught up$"
)


class Terminal:
    """One tmux server of its own (its own socket), a 140x30 window running one command."""

    def __init__(self, cwd: Path) -> None:
        assert shutil.which("tmux"), "tmux is missing: .ci/run installs it"
        self.socket = f"cw-progress-{uuid.uuid4().hex[:8]}"
        self.cwd = cwd

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def run(self, *args: str) -> None:
        """`python -m service run ARGS` in the window, with a clean environment."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.cwd), "TERM": "xterm-256color"}
        env["LANG"] = "C.UTF-8"
        # bash, as a terminal's shell does, waits for the worker (a Ctrl+C reaches both) and
        # prints its exit status; tmux's own pane status can trail a worker's exit for long.
        command = ["bash", "-c", f'"$@"; echo "{EXIT_STATUS} $?"', "bash"]
        command += ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
        command += [sys.executable, "-m", "service", "run", *args]
        # The window stays after the command exits (remain-on-exit), set before it starts.
        window = ["-d", "-x", "140", "-y", "30", "-c", str(self.cwd), shlex.join(command)]
        remain = ["set-option", "-g", "remain-on-exit", "on"]
        self.tmux("-f", "/dev/null", *remain, ";", "new-session", *window)

    def screen(self) -> list[str]:
        """The window's lines from the top of its history (wrapped lines joined), without tmux's
        own `Pane is dead` line and trailing blank lines."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "0")
        lines = [line for line in text.splitlines() if not line.startswith("Pane is dead")]
        while lines and not lines[-1].strip():
            lines.pop()
        return lines

    def wait(self, what: str, done: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
        """The screen once `done(screen)` holds; fails showing the screen after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if done(screen):
                return screen
            assert time.monotonic() < deadline, f"no {what}; screen:\n" + "\n".join(screen)
            time.sleep(0.1)

    def wait_exit(self) -> tuple[int, list[str]]:
        """(the worker's exit status, the screen then)."""
        screen = self.wait("exit", lambda s: bool(s) and s[-1].startswith(EXIT_STATUS))
        return int(screen[-1].split()[-1]), screen[:-1]

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    term = Terminal(tmp_path)
    yield term
    term.close()


def _shows_progress(screen: list[str]) -> bool:
    return bool(screen) and PROGRESS.search(screen[-1]) is not None


def test_progress_line_shows_below_the_logs_and_vanishes_at_exit(terminal: Terminal) -> None:
    """Mid-run the bottom line is the progress (bar, percent, rate, ETA, sum, partitions) under
    the log lines; at exit it is gone and the last line is worker_stopped."""
    terminal.run("--log-format", "console", "--max-rate", "40000", "--checkpoint-interval", "0.5")
    screen = terminal.wait("a progress line", _shows_progress)
    assert any("worker_started" in line for line in screen[:-1])
    assert "━" in screen[-1]  # the bar
    screen = terminal.wait(
        "a checkpoint logged above the progress line",
        lambda s: _shows_progress(s) and any("checkpoint_saved" in line for line in s[:-1]),
    )
    percent = PROGRESS.search(screen[-1])
    assert percent is not None
    assert 0.0 < float(percent.group(1)) < 100.0

    status, screen = terminal.wait_exit()
    assert status == 0
    assert not any("records/s" in line or "━" in line for line in screen)
    assert "worker_stopped" in screen[-1]
    assert "reason=completed" in screen[-1]
    assert any("completed " in line for line in screen)


def test_ctrl_c_stops_gracefully_and_leaves_no_progress_line(terminal: Terminal) -> None:
    """Ctrl+C mid-run, metrics served too: the final checkpoint, exit 0, the line is wiped."""
    terminal.run(
        "--log-format", "console", "--max-rate", "20000", "--metrics-address", "127.0.0.1:0"
    )
    screen = terminal.wait("a progress line", _shows_progress)
    assert any("metrics_listening" in line for line in screen[:-1])
    terminal.tmux("send-keys", "-t", "0", "C-c")
    status, screen = terminal.wait_exit()
    assert status == 0
    assert any("shutdown_requested" in line and "SIGINT" in line for line in screen)
    assert any("checkpoint_saved" in line and "reason=shutdown" in line for line in screen)
    assert not any("records/s" in line or "━" in line for line in screen)
    assert "reason=shutdown" in screen[-1]


def test_a_terminal_closed_under_the_worker_is_a_graceful_stop(tmp_path: Path) -> None:
    """The terminal goes away (a closed window, an ssh drop) while the progress line is on it:
    SIGHUP, the final checkpoint, exit 0 and worker_stopped last, though the line can no longer
    be taken off a terminal that is gone."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "service", "run", "--log-format", "console"]
    argv += ["--max-rate", "20000"]
    pid, terminal = pty.fork()  # the child's controlling terminal: its stderr, here
    if pid == 0:
        try:
            os.chdir(tmp_path)
            os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
            os.execve(sys.executable, argv, worker_env())
        finally:
            os._exit(127)
    try:
        shown = b""
        deadline = time.monotonic() + 30
        while b"records/s" not in shown:  # the progress line is on the terminal
            assert time.monotonic() < deadline, f"no progress line: {shown[-500:]!r}"
            if select.select([terminal], [], [], 1)[0]:
                shown += os.read(terminal, 65536)
        os.close(terminal)  # the terminal is gone: the kernel sends SIGHUP
        while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline + 30, "the worker did not exit"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    assert os.waitstatus_to_exitcode(ended[1]) == 0, "\n".join(lines[-5:])
    assert any("shutdown_requested" in line and "SIGHUP" in line for line in lines)
    assert any("checkpoint_saved" in line and "reason=shutdown" in line for line in lines)
    assert "worker_stopped" in lines[-1]
    assert "reason=shutdown" in lines[-1]


def test_json_logs_on_a_terminal_have_no_progress_line(terminal: Terminal) -> None:
    """With JSON logs, even on a terminal, the screen holds JSON lines and nothing else."""
    terminal.run("--log-format", "json", "--max-rate", "60000")
    status, screen = terminal.wait_exit()
    assert status == 0
    events = events_of("\n".join(screen))
    assert len(events) == len(screen)
    assert events[-1]["event"] == "worker_stopped"


@pytest.mark.parametrize("log_format", ["console", "json", "auto"])
def test_output_that_is_not_a_terminal_gets_no_progress(tmp_path: Path, log_format: str) -> None:
    """With stdout and stderr pipes, stderr stays empty and stdout holds only log lines."""
    (tmp_path / "numbers.txt").write_bytes(NUMBERS)
    done = cli(["run", "--log-format", log_format], tmp_path, env=worker_env())
    assert (done.returncode, done.stderr) == (0, "")
    assert "records/s" not in done.stdout
    assert "\r" not in done.stdout
