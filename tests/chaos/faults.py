"""The fault injectors: syscalls that fail or stall (strace), a small or read-only file system
(tmpfs, remount), a full disk.

Each raises `Unavailable` when this machine cannot inject it (no strace; mounts need root), so a
part reports it as skipped, never as passed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.processes import Unavailable
from tests.strace import strace_prefix

__all__ = ["failing", "fill", "remount", "slow_fsync", "tmpfs"]


def slow_fsync(seconds: float) -> list[str]:
    """A prefix under which every fsync of the worker waits `seconds` before it runs."""
    return strace_prefix("/dev/null", "fsync", f"fsync:delay_enter={int(seconds * 1e6)}")


def failing(
    syscall: str, error: str, *, when: int | None = None, log: Path | str = "/dev/null"
) -> list[str]:
    """A prefix under which `syscall` fails with `error`: only its `when`-th call (counted per
    thread), or every call; the trace in `log` marks the failed calls INJECTED."""
    spec = f"{syscall}:error={error}" + (f":when={when}" if when is not None else "")
    return strace_prefix(log, syscall, spec)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A small tmpfs at `path` (root only), unmounted afterwards whatever happened."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    """Remount the file system at `path` `ro` or `rw`."""
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"remount {mode} {path}: {done.stderr.strip()}")


def fill(directory: Path) -> Path:
    """Fill a file system until it refuses another byte; the file that filled it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in (4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: full to this granularity
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return filler
