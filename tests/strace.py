"""Syscall tracing for real-process tests: an strace prefix for a worker, and its log read back.

A `WorkerProcess(args, prefix=strace_prefix(...))` runs under strace: `syscalls` are traced
(seccomp keeps every other call at full speed), `inject` makes some of them fail or wait
(`fsync:delay_enter=20000`, `rename:error=EIO:when=3`), and `calls_in` reads a `-y` log back as
(pid, syscall, arguments, result).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from tests.processes import Unavailable

__all__ = ["calls_in", "strace_prefix"]

_SYSCALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_RESUMED = re.compile(r"^<\.\.\. \w+ resumed>(.*)$")


def strace_prefix(
    log: Path | str, syscalls: str, inject: str | None = None, *, paths: bool = False
) -> list[str]:
    """strace tracing only `syscalls` into `log`, maybe injecting; `paths` names each fd's file.

    Raises `Unavailable` when strace is not installed."""
    if shutil.which("strace") is None:
        raise Unavailable("strace is not installed: syscall faults not injected")
    command = ["strace", "-f", "-qq", "-o", str(log), "--seccomp-bpf", "-e", f"trace={syscalls}"]
    if paths:
        command.insert(1, "-y")
    if inject:
        command += ["-e", f"inject={inject}"]
    return command


def calls_in(text: str) -> Iterator[tuple[int, str, str, int]]:
    """(pid, syscall, arguments, result) from an `strace -f` log, interrupted calls rejoined."""
    pending: dict[int, str] = {}
    for line in text.splitlines():
        pid_text, _, rest = line.partition(" ")
        rest = rest.strip()
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>").rstrip()
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        match = _SYSCALL.match(f"{pid} {rest}")
        if match:
            yield pid, match.group(2), match.group(3), int(match.group(4))
