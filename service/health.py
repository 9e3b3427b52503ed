"""`healthcheck`: is a worker alive and is its event loop turning? For Docker's HEALTHCHECK.

Rule 1: healthy means the lock file names a live process and its mtime (the heartbeat, touched
        from the worker's event loop) is fresh: a stalled loop turns unhealthy even though the
        process lives.
Rule 2: with `source = "kafka"` there is no lock: each worker process touches its own heartbeat
        file beside `checkpoint` (`heartbeat_path`), and healthy means every live one is fresh.
Rule 3: it never takes the lock (a check must not stop a worker from starting), and it imports
        only the standard library (the settings too are read with it): Docker runs it every
        few seconds.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from service.storage.lock import HEARTBEAT_INTERVAL, lock_path_for, read_holder

__all__ = [
    "STALE_AFTER",
    "check_health",
    "check_kafka_health",
    "heartbeat_path",
]

STALE_AFTER = 10 * HEARTBEAT_INTERVAL


def heartbeat_path(checkpoint: Path, pid: int) -> Path:
    """A Kafka worker's own heartbeat file, beside `checkpoint`: one per host and process, so
    workers sharing a directory (or a volume) never share one."""
    return checkpoint.with_name(f"{checkpoint.name}.{socket.gethostname()}.{pid}.heartbeat")


def check_kafka_health(checkpoint: Path, now: float | None = None) -> tuple[bool, str]:
    """(healthy, why) for the Kafka workers of this host: each live one beats, and one lives."""
    pattern = heartbeat_path(checkpoint, 0).name.replace(".0.heartbeat", ".*.heartbeat")
    now = time.time() if now is None else now
    beats = []
    for path in sorted(checkpoint.parent.glob(pattern)):
        try:
            pid = int(path.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
            age = now - path.stat().st_mtime
        except (ValueError, ProcessLookupError, OSError):
            continue  # a worker that was killed left it behind
        beats.append((pid, age))
    if not beats:
        return False, f"unhealthy: no live Kafka worker heartbeat beside {checkpoint}"
    stale = [(pid, age) for pid, age in beats if age > STALE_AFTER]
    if stale:
        pid, age = stale[0]
        return False, f"unhealthy: worker pid {pid} has not beaten for {age:.1f} s (stalled)"
    pid, age = beats[0]
    return True, f"healthy: Kafka worker pid {pid}, heartbeat {age:.1f} s ago"


def _held(lock: Path) -> bool:
    """Whether a process of this PID namespace holds a lock on the lock file's inode: read
    from /proc/locks, which lists only the locks of the processes this namespace can see (the
    lock file itself is not touched). True when that cannot be told: the pid decides then."""
    try:
        inode = str(os.stat(lock).st_ino)
        with open("/proc/locks", encoding="ascii", errors="replace") as listing:
            return any(found == inode for found in _LOCKED_INODE.findall(listing.read()))
    except OSError:
        return True


_LOCKED_INODE = re.compile(r" [0-9a-f]+:[0-9a-f]+:(\d+) ")  # MAJOR:MINOR:INODE of each lock


def check_health(checkpoint: Path, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    lock = lock_path_for(checkpoint)
    pid = read_holder(lock)
    if pid is None:
        return False, f"unhealthy: no worker holds {lock}"
    if pid in (os.getpid(), os.getppid()) and not _held(lock):
        # The lock names this very process (or its shell) and nobody holds it: asked from
        # another PID namespace (a one-off container), where pid 1 is the asker's own.
        return False, f"unhealthy: no worker holds {lock} (pid {pid} is this check's own)"
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
