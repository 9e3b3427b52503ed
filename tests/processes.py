"""The real-process harness: start a worker, read its JSON log, wait for events, measure it.

One harness for the end-to-end tests, the chaos campaign (tests/chaos/) and the bench (bench/):

- `WorkerProcess` runs `python -m service run ARGS` (or any program, maybe under a prefix such as
  strace: see tests/strace.py) in the background and collects its log events as they come;
- `cli` runs a command to its end; `events_of` reads the log lines of a finished one;
- `measured_run` runs a command to its end and reports its wall time, CPU time and peak RSS.

Rule 1: stderr goes to a file, never to a pipe nobody reads: a chatty process cannot block.
Rule 2: peak RSS is the process's own. A live worker's is polled from /proc (VmHWM) while it
        runs; a finished one's is `ru_maxrss` from `wait4`, read by a small parent of its own
        (`_REAPER`), because after fork and exec `ru_maxrss` keeps the forking process's mark.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from service.signals import IGNORED_SIGNALS

__all__ = [
    "RUN",
    "Event",
    "Finished",
    "Unavailable",
    "WorkerProcess",
    "cli",
    "events_of",
    "kill_leftovers",
    "measured_run",
    "unmeasured",
    "worker_env",
]

Event = dict[str, Any]

# `python -m service run`, by the interpreter running the tests: the venv's.
RUN: tuple[str, ...] = (sys.executable, "-m", "service", "run")


class Unavailable(Exception):
    """Something this machine lacks (strace, mounts): what needs it is skipped, never passed."""


def worker_env(**extra: str) -> dict[str, str]:
    """The environment for a worker under test: JSON logs, no stray WORKER_* from the caller.

    Under `make test` it carries coverage's COVERAGE_PROCESS_CONFIG, so the worker's code counts
    (see `[tool.coverage.run]` in pyproject.toml); `unmeasured` takes it out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update({"WORKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def unmeasured(env: dict[str, str]) -> dict[str, str]:
    """`env` without coverage's variables: a Python process started with it is not traced, so
    it runs at its own speed (coverage's tracer about doubles a worker's CPU time)."""
    return {k: v for k, v in env.items() if not k.startswith("COVERAGE_")}


def cli_writing_to(
    output: IO[Any], args: Sequence[str], cwd: Path, *, stderr: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m service ARGS` to completion, its stdout the open file `output` (a log
    file, /dev/full); its stderr captured, or `subprocess.STDOUT` to the same file."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env=worker_env(),
        stdout=output,
        stderr=stderr,
        timeout=120,
    )


def cli(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m service ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env=env or worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def events_of(stdout: str) -> list[Event]:
    """The JSON log lines of a worker's stdout."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _matches(event: Event, names: tuple[str, ...], fields: dict[str, Any]) -> bool:
    """Named one of `names`, each field equal to its value, or true of it if it is a function."""
    return event.get("event") in names and all(
        want(event.get(k)) if callable(want) else event.get(k) == want for k, want in fields.items()
    )


_running: set[WorkerProcess] = set()  # started, not reaped yet


def kill_leftovers() -> None:
    """Kill and reap every worker a test left running (it failed before `finish`), so its pipes
    and files are closed here and not in some later test's garbage collection."""
    for worker in list(_running):
        worker.kill()


class WorkerProcess:
    """`python -m service run ARGS` in the background, its log events collected as they come.

    `prefix` runs it under another program (strace); `program` replaces `python -m service run`
    (the bench runs the installed console script and passes its whole command line as `args`).
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        *,
        prefix: Sequence[str] = (),
        program: Sequence[str] = RUN,
    ) -> None:
        self.traced = bool(prefix)
        self.started = time.monotonic()
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed when reaped)
        self.process = subprocess.Popen(
            [*prefix, *program, *args],
            cwd=cwd,
            env=env or worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
        )
        self.events: list[Event] = []
        self.raw: list[str] = []  # every stdout line, as written
        self.noise: list[str] = []  # stdout lines that are not JSON objects
        self.code: int | None = None
        self.ended: float | None = None
        self.peak_rss = 0  # bytes, polled while `finish` waits (not under a prefix)
        self._stderr = ""
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        _running.add(self)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._changed:
                self.raw.append(line)
                if isinstance(event, dict):
                    self.events.append(event)
                elif line.strip():
                    self.noise.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    # --- its log -------------------------------------------------------------------------------

    def wait_for_or_none(
        self, event: str | tuple[str, ...], timeout: float = 30, **fields: Any
    ) -> Event | None:
        """The first log event named `event` (or one of them) with these fields (a value, or a
        function of the field that says yes: `offset=lambda o: o > 0`); None when none comes
        within `timeout` seconds or the worker's output ends first."""
        names = (event,) if isinstance(event, str) else event
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for item in self.events:
                    if _matches(item, names, fields):
                        return item
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._changed.wait(min(left, 0.05))

    def wait_for(self, event: str | tuple[str, ...], timeout: float = 30, **fields: Any) -> Event:
        """The first log event named `event` with these fields; fails after `timeout` seconds."""
        found = self.wait_for_or_none(event, timeout, **fields)
        if found is None:
            with self._changed:
                log = "".join(self.raw)
            raise AssertionError(f"no {event} {fields} in log:\n{log}")
        return found

    def wait_ready(self, timeout: float = 30) -> bool:
        """True once the worker loaded (or found no) checkpoint: it is about to read."""
        found = self.wait_for_or_none(("checkpoint_loaded", "checkpoint_not_found"), timeout)
        return found is not None

    def named(self, event: str, **fields: Any) -> list[Event]:
        """The log events named `event` with these fields, so far."""
        with self._changed:
            return [e for e in self.events if _matches(e, (event,), fields)]

    @property
    def errors(self) -> list[Event]:
        """The `error`-level log events, so far."""
        with self._changed:
            return [e for e in self.events if e.get("level") == "error"]

    @property
    def completed(self) -> bool:
        """It exited 0 after logging `completed`."""
        return self.code == 0 and bool(self.named("completed"))

    def tail(self) -> str:
        """The last events and stderr, for a problem report."""
        events = [e.get("event") for e in self.events[-6:]]
        return f"events ...{events}, stderr {self.stderr[-600:]!r}"

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr (after `finish` or `kill`)."""
        return self._stderr

    # --- its process ---------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The worker's own pid (under a prefix, the one it logs; None if it never says)."""
        if not self.traced:
            return self.process.pid
        started = self.wait_for_or_none("worker_started", timeout=30)
        return int(started["pid"]) if started else None

    def wait_catching(self, signum: int, timeout: float = 30) -> bool:
        """True once the worker has a handler for `signum` (SigCgt in /proc), or ignores it
        (SigIgn) when it is one of the signals the worker ignores: before that, any process dies
        of the signal's default action, and no code of the worker has run. A stop signal ignored
        (inherited from `nohup`) never counts: it would stop nothing."""
        fields = ("SigCgt:", "SigIgn:") if signum in IGNORED_SIGNALS else ("SigCgt:",)
        pid = self.pid()
        deadline = time.monotonic() + timeout
        while pid is not None and time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return False
            taken = 0
            for line in status.splitlines():
                if line.startswith(fields):
                    taken |= int(line.split()[1], 16)
            if taken & (1 << (signum - 1)):
                return True
            time.sleep(0.002)
        return False

    def signal(self, signum: int) -> float:
        """Send `signum` to the worker (not to its prefix); the instant it was sent."""
        pid = self.pid()
        sent = time.monotonic()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return sent

    def finish(self, timeout: float = 30) -> int:
        """Wait for the exit; the exit code (negative: killed by that signal). After `timeout`
        seconds the worker is killed and `subprocess.TimeoutExpired` raised."""
        if self.code is not None:
            return self.code
        deadline = time.monotonic() + timeout
        while True:
            self._sample_memory()
            try:
                self.process.wait(timeout=0.005)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.kill()
                    raise
        self._reaped()
        assert self.code is not None
        return self.code

    def kill(self) -> None:
        """SIGKILL the worker (and its prefix), and reap it."""
        if self.process.poll() is None:
            for pid in {self.process.pid, self.pid() if self.traced else None}:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self._reaped()

    def _reaped(self) -> None:
        _running.discard(self)
        if self.ended is None:
            self.ended = time.monotonic()
        self.code = self.process.returncode
        self._reader.join(timeout=10)
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()
        if not self._stderr_file.closed:
            self._stderr_file.seek(0)
            self._stderr = self._stderr_file.read().decode(errors="replace")
            self._stderr_file.close()

    def _sample_memory(self) -> None:
        if self.traced:
            return
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)


# --- a process run to its end, measured ----------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """A process that ran to its end: exit code, wall and CPU seconds, peak RSS in bytes, stdout."""

    code: int
    wall: float
    cpu: float
    max_rss: int
    stdout: str


# Forks and execs its arguments, reaps them with wait4 and reports "code wall cpu max_rss_kib" to
# the file named first. Wall time is measured here, so this parent's own start-up is not counted.
_REAPER = """
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
with open(report, "w") as out:
    out.write(f"{code} {wall!r} {usage.ru_utime + usage.ru_stime!r} {usage.ru_maxrss}")
"""


def measured_run(argv: Sequence[str], stdout: Path, env: dict[str, str]) -> Finished:
    """Run `argv` to its end, its stdout to a file; time it and read its peak RSS."""
    report = stdout.with_name(stdout.name + ".reaped")
    with open(stdout, "wb") as out:
        subprocess.run(
            [sys.executable, "-S", "-c", _REAPER, str(report), *argv],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=env,
            check=True,
        )
    code, wall, cpu, max_rss_kib = report.read_text().split()
    return Finished(int(code), float(wall), float(cpu), int(max_rss_kib) * 1024, stdout.read_text())
