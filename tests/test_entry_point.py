"""The Docker image's entry point, `hold-stop-signals`: a stop sent to a worker that is PID 1
before it listens for signals (as `docker stop` right after `docker start` does) is not lost.

The worker runs as PID 1 of a PID namespace of its own (`unshare`), as in a container, without
building an image: the kernel drops a signal sent to PID 1 while its action is the default, and
the entry point holds the stop signals blocked (pending) until the worker's handlers are in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import RUN, events_of, worker_env

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "deploy" / "docker" / "hold_stop_signals.c"


@pytest.fixture(scope="module")
def entry_point(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The entry point, compiled as the Dockerfile compiles it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a PID namespace of its own needs root and unshare(1)")
    built = tmp_path_factory.mktemp("entry") / "hold-stop-signals"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", built, SOURCE], check=True)
    return built


def _blocks(pid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    blocked = next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1]
    return bool(int(blocked, 16) >> (signum - 1) & 1)


def _holding(pid: int, signum: int, timeout: float) -> int:
    """The one child of `pid` (unshare's: the namespace's PID 1), as soon as it runs the entry
    point (or what that started) and holds `signum` blocked: the entry point's first step, a
    few microseconds after its exec. (Before its exec the child is unshare, which may block
    signals for a moment of its own.)"""
    unshare = os.path.realpath(shutil.which("unshare") or "unshare")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if os.readlink(f"/proc/{child}/exe") == unshare:
                continue
            if _blocks(int(child), signum):
                return int(child)
        except (FileNotFoundError, ValueError):  # no child yet, or gone
            continue
    raise AssertionError(f"no child of {pid} held signal {signum} blocked within {timeout} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_sent_to_pid_1_before_it_listens_is_a_graceful_stop(
    entry_point: Path, tmp_path: Path, signum: int
) -> None:
    """Five times: the worker as PID 1, signalled the instant the entry point holds the signal,
    long before the interpreter has started; each time it logs the request, saves its final
    checkpoint and exits 0 at once. Without the entry point the signal is dropped and the worker
    reads on; without the worker's release of it, it never arrives."""
    (tmp_path / "numbers.txt").write_bytes(b"".join(b"%d\n" % i for i in range(100_000)))
    for _ in range(5):
        started = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--kill-child", "--", entry_point, *RUN, "--follow"],
            cwd=tmp_path,
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            os.kill(_holding(started.pid, signum, timeout=10), signum)
            stdout, stderr = started.communicate(timeout=20)
        finally:
            started.kill()
        assert started.returncode == 0, stderr
        events = events_of(stdout.decode())
        assert [e["signal"] for e in events if e["event"] == "shutdown_requested"] == [
            signal.Signals(signum).name
        ]
        assert events[-1]["event"] == "worker_stopped"
        assert events[-1]["exit_code"] == 0
        assert [e["reason"] for e in events if e["event"] == "checkpoint_saved"] == ["shutdown"]
        assert (tmp_path / "checkpoint.json").exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_held_for_another_command_ends_it_as_any_stop_does(
    entry_point: Path, tmp_path: Path, signum: int, code: int
) -> None:
    """`docker stop` on a `docker run ... status` the instant it starts: the held signal
    arrives when the command releases it, and ends it as a stop ends any command (128 + its
    number, or 130 for Ctrl+C), without a traceback."""
    started = subprocess.Popen(
        [entry_point, *RUN[:-1], "status"],
        cwd=tmp_path,
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not _blocks(started.pid, signum):
            assert time.monotonic() < deadline, "the entry point never held the signal"
        os.kill(started.pid, signum)
        _, stderr = started.communicate(timeout=20)
    finally:
        started.kill()
    assert started.returncode == code
    assert b"Traceback" not in stderr
