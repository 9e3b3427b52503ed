"""Real processes, timed from the outside: wall time from spawn to reaping, and peak RSS.

Rule 1: every figure is of a whole process, as a user would see it: interpreter start-up, imports
        and exit included, for the worker and for the baselines alike.
Rule 2: peak RSS is the child's own `ru_maxrss`, read with `wait4` when it is reaped, by a
        small parent of its own (see `_REAPER`); wall time is measured there too, so that
        parent's start-up is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["WORKER", "Finished", "LiveWorker", "clean_env", "events_in", "run", "worker_args"]

# The console script beside the interpreter running the bench: the venv's, as `make bench` uses.
WORKER = str(Path(sys.executable).with_name("checkpoint-worker"))

Event = dict[str, Any]


@dataclass(frozen=True)
class Finished:
    """A process that ran to its end: exit code, wall and CPU seconds, peak RSS in bytes, stdout."""

    code: int
    wall: float
    cpu: float
    max_rss: int
    stdout: str


def clean_env() -> dict[str, str]:
    """The caller's environment without WORKER_* settings, so flags alone configure a run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}


def worker_args(
    input: Path, workdir: Path, *extra: str, checkpoint_interval: float = 1.0
) -> list[str]:
    """`checkpoint-worker run` on `input`, its checkpoint and result in `workdir`, JSON logs."""
    return [
        WORKER,
        "run",
        "--input",
        str(input),
        "--checkpoint",
        str(workdir / "checkpoint.json"),
        "--result",
        str(workdir / "result.json"),
        "--checkpoint-interval",
        str(checkpoint_interval),
        "--log-format",
        "json",
        *extra,
    ]


# Forks and execs its arguments, reaps them with wait4 and reports "code wall cpu max_rss_kib" to
# the file named first. The child is forked from this small interpreter, not from the bench:
# after fork and exec, ru_maxrss keeps the forking process's high-water mark, and the bench's
# own (numpy, generated inputs) would hide the worker's.
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


def run(argv: Sequence[str], stdout: Path, env: dict[str, str] | None = None) -> Finished:
    """Run `argv` to its end, its stdout to a file; time it and read its peak RSS.

    `env` adds to the environment (without the caller's WORKER_* settings)."""
    report = stdout.with_name(stdout.name + ".reaped")
    with open(stdout, "wb") as out:
        subprocess.run(
            [sys.executable, "-S", "-c", _REAPER, str(report), *argv],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=clean_env() | (env or {}),
            check=True,
        )
    code, wall, cpu, max_rss_kib = report.read_text().split()
    return Finished(int(code), float(wall), float(cpu), int(max_rss_kib) * 1024, stdout.read_text())


def events_in(text: str) -> list[Event]:
    """The JSON log lines of a worker's stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class LiveWorker:
    """A worker in the background whose log events are collected as they come."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), text=True
        )
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                with self._changed:
                    self.events.append(json.loads(line))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, *names: str, timeout: float = 60.0) -> Event:
        """The first event named one of `names`; RuntimeError if none comes in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if event["event"] in names:
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise RuntimeError(f"worker logged no {'/'.join(names)}: {self.events[-3:]}")
                self._changed.wait(min(left, 0.1))

    def named(self, name: str) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e["event"] == name]

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the exit and the last log line; return the exit code."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stop(self) -> None:
        """Make sure it is gone (a failed measurement must not leave it running)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
