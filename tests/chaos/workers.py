"""How the campaign runs a worker: the names of its files, its pace, its environment.

Every part starts its workers with `start_worker`, on the shared harness (tests/processes.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.processes import WorkerProcess, unmeasured, worker_env

__all__ = [
    "CHECKPOINT",
    "FOLLOW",
    "INPUT",
    "MAX_LINE",
    "MB",
    "PACED",
    "RATE",
    "RESULT",
    "RSS_LIMIT_MB",
    "SHUTDOWN_TIMEOUT",
    "start_worker",
]

INPUT = "numbers.txt"
CHECKPOINT = "checkpoint.json"
RESULT = "result.json"
MAX_LINE = 128  # room for a signed, padded 100-digit number; long lines stay cheap to write
RATE = 5000  # records per second of a paced run: lives of a few tenths of a second do real work
PACED = ["--max-rate", str(RATE), "--checkpoint-interval", "0.01", "--max-line-bytes", "128"]
FOLLOW = ["--follow", "--poll-interval", "0.05", "--max-line-bytes", str(MAX_LINE)]
MB = 1024 * 1024
RSS_LIMIT_MB = 150.0
SHUTDOWN_TIMEOUT = 5.0  # the setting's default, itself far inside Docker's 10 s grace


def _env() -> dict[str, str]:
    """JSON logs and nothing from the caller's WORKER_*. Not PYTHONUNBUFFERED: each log line is
    then one write() (structlog flushes per line), which the write fault injection relies on.

    Not traced by coverage either (`make test` measures the end-to-end tests' workers): the
    campaign times stops and reads peak RSS of workers as users run them, and its hundreds of
    short lives, most ended by SIGKILL, would double the short campaign's time in `make test`."""
    env = unmeasured(worker_env())
    del env["PYTHONUNBUFFERED"]
    return env


def start_worker(
    cwd: Path, args: Sequence[str] = (), *, prefix: Sequence[str] = ()
) -> WorkerProcess:
    """`python -m service run ARGS` in `cwd`, maybe under an strace `prefix`."""
    return WorkerProcess(args, cwd, _env(), prefix=prefix)
