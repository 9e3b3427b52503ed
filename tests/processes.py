"""Real worker processes for end-to-end tests: start, signal, read their JSON log lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "cli", "worker_env"]

Event = dict[str, Any]


def worker_env(**extra: str) -> dict[str, str]:
    """The environment for a worker under test: JSON logs, no stray WORKER_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env.update({"WORKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


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
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


class WorkerProcess:
    """`python -m service run ARGS` in the background, its log lines collected as they come."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """`prefix` runs the worker under another command (strace, say)."""
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "service", "run", *args],
            cwd=cwd,
            env=env or worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._stderr = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.raw.append(line)
                if line.startswith("{"):
                    self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, event: str, timeout: float = 30, **fields: Any) -> Event:
        """The first log event named `event` with these fields; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for item in self.events:
                    if item["event"] == event and all(item.get(k) == v for k, v in fields.items()):
                        return item
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {event} {fields} in log:\n{''.join(self.raw)}")
                self._changed.wait(min(left, 0.1))

    def named(self, event: str) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e["event"] == event]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 30) -> int:
        """Wait for exit; return the exit code (negative: killed by that signal)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=5)
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        if self.process.stderr is not None and not self.process.stderr.closed:
            self._stderr = self.process.stderr.read()
            self.process.stderr.close()
        if self.process.stdout is not None and not self._reader.is_alive():
            self.process.stdout.close()

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr (after `finish`)."""
        return self._stderr

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)
        self._close_pipes()
