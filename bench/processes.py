"""The bench's processes: the installed console script, configured by its flags alone, started
and measured by the shared real-process harness (tests/processes.py).

Every figure is of a whole process, as a user would see it: interpreter start-up, imports and
exit included, for the worker and for the baselines alike (`measured_run`: wall time, CPU time
and the process's own peak RSS).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.processes import Finished, WorkerProcess, events_of, measured_run

__all__ = ["WORKER", "Finished", "clean_env", "events_of", "live_worker", "run", "worker_args"]

# The console script beside the interpreter running the bench: the venv's, as `make bench` uses.
WORKER = str(Path(sys.executable).with_name("checkpoint-worker"))


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


def run(argv: Sequence[str], stdout: Path, env: dict[str, str] | None = None) -> Finished:
    """Run `argv` to its end, its stdout to a file; its wall and CPU time and peak RSS.

    `env` adds to the environment (without the caller's WORKER_* settings)."""
    return measured_run(argv, stdout, clean_env() | (env or {}))


def live_worker(argv: Sequence[str]) -> WorkerProcess:
    """The command line `argv` (the console script's) in the background, its events collected."""
    return WorkerProcess(argv, env=clean_env(), program=())
