"""`healthcheck`: is a worker alive and is its event loop turning? For Docker's HEALTHCHECK.

Rule 1: healthy means the lock file names a live process and its mtime (the heartbeat, touched
        from the worker's event loop) is fresh: a stalled loop turns unhealthy even though the
        process lives.
Rule 2: it never takes the lock (a check must not stop a worker from starting), and it imports
        only the standard library: Docker runs it every few seconds. That is why it finds the
        checkpoint path itself, by the same precedence as `settings.py`, for that one key.
"""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

from .lock import HEARTBEAT_INTERVAL, lock_path_for, read_holder

__all__ = ["STALE_AFTER", "check_health", "checkpoint_path"]

STALE_AFTER = 10 * HEARTBEAT_INTERVAL


def checkpoint_path(flag: str | None, config: str | None) -> Path:
    """The `checkpoint` setting: flag > WORKER_CHECKPOINT > config file > default."""
    if flag:
        return Path(flag)
    if os.environ.get("WORKER_CHECKPOINT"):
        return Path(os.environ["WORKER_CHECKPOINT"])
    config = config or os.environ.get("WORKER_CONFIG")
    if config:
        try:
            with open(config, "rb") as handle:
                value = tomllib.load(handle).get("checkpoint")
        except (OSError, tomllib.TOMLDecodeError):
            value = None
        if isinstance(value, str):
            return Path(value)
    return Path("checkpoint.json")


def check_health(checkpoint: Path, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    lock = lock_path_for(checkpoint)
    pid = read_holder(lock)
    if pid is None:
        return False, f"unhealthy: no worker holds {lock}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"unhealthy: worker pid {pid} is not running"
    except PermissionError:
        pass  # alive, owned by another user
    try:
        age = (time.time() if now is None else now) - os.stat(lock).st_mtime
    except OSError as error:
        return False, f"unhealthy: cannot read {lock}: {error.strerror}"
    if age > STALE_AFTER:
        return False, f"unhealthy: worker pid {pid} has not beaten for {age:.1f} s (stalled)"
    return True, f"healthy: worker pid {pid}, heartbeat {age:.1f} s ago"
