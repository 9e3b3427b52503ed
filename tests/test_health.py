"""The health check and the lock it reads: alive and beating, dead, stalled, or absent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import LockHeld
from service.health import STALE_AFTER, check_health
from service.storage.lock import WorkerLock, lock_path_for, read_holder
from tests.processes import cli, worker_env

pytestmark = pytest.mark.usefixtures("no_worker_env")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tmp_path / "checkpoint.json"


@pytest.fixture
def held(checkpoint: Path) -> Iterator[WorkerLock]:
    """The checkpoint's lock, held by this process as a worker holds it."""
    lock = WorkerLock(checkpoint)
    lock.acquire()
    yield lock
    lock.release()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    return process.pid


def age_lock(checkpoint: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(lock_path_for(checkpoint), (then, then))


def test_no_lock_file_is_unhealthy(checkpoint: Path) -> None:
    """Without a lock file no worker runs: unhealthy, saying so."""
    healthy, message = check_health(checkpoint)
    assert not healthy
    assert "no worker" in message
    assert not lock_path_for(checkpoint).exists()


@pytest.mark.parametrize(
    "content", ["", "not a pid\n", "-5\n", "0\n", "99999999999999999999\n", "4194305\n", "\u00b3\n"]
)
def test_lock_without_a_pid_is_unhealthy(checkpoint: Path, content: str) -> None:
    """A lock file that names no process is unhealthy: 0 (which `kill` takes for the whole
    process group), a number past any pid or a digit that is not ASCII included."""
    lock_path_for(checkpoint).write_text(content)
    assert check_health(checkpoint)[0] is False


def test_lock_naming_a_dead_pid_is_unhealthy(checkpoint: Path) -> None:
    """A lock file left by a process that died is unhealthy, naming the pid."""
    pid = dead_pid()
    lock_path_for(checkpoint).write_text(f"{pid}\n")
    healthy, message = check_health(checkpoint)
    assert not healthy
    assert str(pid) in message
    assert "not running" in message


def test_a_lock_naming_the_asker_itself_is_unhealthy_unless_held(checkpoint: Path) -> None:
    """Asked from a one-off container, the lock's pid (the worker's 1) is the asker's own: a
    lock that nobody holds is no worker, however fresh its heartbeat."""
    lock_path_for(checkpoint).write_text(f"{os.getpid()}\n")
    healthy, message = check_health(checkpoint)
    assert not healthy
    assert "no worker holds" in message


def test_live_worker_with_fresh_heartbeat_is_healthy(checkpoint: Path, held: WorkerLock) -> None:
    """A held lock naming a live process with a fresh mtime is healthy."""
    assert read_holder(held.path) == os.getpid()
    healthy, message = check_health(checkpoint)
    assert healthy, message
    assert str(os.getpid()) in message


def test_stale_heartbeat_is_stalled(checkpoint: Path, held: WorkerLock) -> None:
    """A live process whose heartbeat stopped (a stuck event loop) is unhealthy: stalled."""
    age_lock(checkpoint, 3600)
    healthy, message = check_health(checkpoint)
    assert not healthy
    assert "stalled" in message


def test_heartbeat_makes_it_healthy_again(checkpoint: Path, held: WorkerLock) -> None:
    """A heartbeat after a stall refreshes the mtime, and the worker is healthy again."""
    age_lock(checkpoint, 3600)
    held.heartbeat()
    assert check_health(checkpoint)[0] is True


@pytest.mark.parametrize(
    ("since_beat", "healthy"),
    [(0.0, True), (STALE_AFTER - 0.5, True), (STALE_AFTER + 0.5, False), (3600.0, False)],
)
def test_staleness_threshold(
    checkpoint: Path, held: WorkerLock, since_beat: float, healthy: bool
) -> None:
    """Within STALE_AFTER seconds of the last beat the worker is healthy, beyond it not."""
    mtime = os.stat(held.path).st_mtime
    assert check_health(checkpoint, now=mtime + since_beat)[0] is healthy


def test_second_lock_names_the_holder(checkpoint: Path, held: WorkerLock) -> None:
    """A second worker on the same checkpoint is refused, with the holder's pid."""
    with pytest.raises(LockHeld) as caught:
        WorkerLock(checkpoint).acquire()
    assert str(os.getpid()) in caught.value.message
    assert caught.value.exit_code == 1


def test_released_lock_can_be_taken(checkpoint: Path) -> None:
    """Once released, the lock can be taken again, without a stale lock to clean up."""
    first = WorkerLock(checkpoint)
    first.acquire()
    first.release()
    second = WorkerLock(checkpoint)
    second.acquire()
    second.release()


def test_non_worker_lock_keeps_the_pid(checkpoint: Path) -> None:
    """A lock taken for another purpose (reset) does not overwrite the worker pid in the file."""
    lock_path_for(checkpoint).write_text("12345\n")
    lock = WorkerLock(checkpoint)
    lock.acquire(purpose="reset")
    try:
        assert read_holder(lock.path) == 12345
    finally:
        lock.release()


# --- the command -------------------------------------------------------------------------


def test_healthcheck_command(tmp_path: Path) -> None:
    """`healthcheck` exits 1 without a worker and 0 while a live one beats, from its settings."""
    done = cli(["healthcheck"], cwd=tmp_path, timeout=60)
    assert (done.returncode, done.stderr) == (1, "")
    assert "unhealthy" in done.stdout
    lock = WorkerLock(tmp_path / "elsewhere.json")
    lock.acquire()
    try:
        env = worker_env(WORKER_CHECKPOINT="elsewhere.json")
        done = cli(["healthcheck", "--max-rate", "5"], cwd=tmp_path, env=env, timeout=60)
        assert done.returncode == 0, done.stdout
        done = cli(["healthcheck", "--checkpoint", "checkpoint.json"], cwd=tmp_path, timeout=60)
        assert done.returncode == 1, done.stdout
    finally:
        lock.release()


def test_healthcheck_from_another_pid_namespace_finds_no_worker_in_its_own_pid_1(
    tmp_path: Path,
) -> None:
    """A container's worker is its pid 1, and the lock says so. `healthcheck` run in another
    PID namespace (a one-off container: `unshare` here) is pid 1 there itself: a worker that
    lives on and beats, but in the first namespace, is no worker of its own, so exit 1 rather
    than `healthy` about itself; in the worker's namespace the same lock is healthy."""
    lock = WorkerLock(tmp_path / "checkpoint.json")
    lock.acquire()
    try:
        lock.path.write_text("1\n")  # the pid a containerised worker writes
        check = [sys.executable, "-m", "service", "healthcheck"]
        elsewhere = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", *check],
            cwd=tmp_path,
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert elsewhere.returncode == 1, elsewhere.stdout + elsewhere.stderr
        assert "no worker holds" in elsewhere.stdout
        here = subprocess.run(check, cwd=tmp_path, env=worker_env(), capture_output=True, text=True)
        assert here.returncode == 0, here.stdout
    finally:
        lock.release()


@pytest.mark.parametrize(
    ("args", "config", "named"),
    [
        (["--bogus"], None, "--bogus"),
        (["--max-rate", "abc"], None, "max_rate"),
        (["--config", "c.toml"], "bogus = 1\n", "bogus"),
        (["--config", "c.toml"], "checkpoint = \n", "c.toml"),
        (["--config", "missing.toml"], None, "missing.toml"),
    ],
    ids=["unknown flag", "bad value", "unknown key", "bad TOML", "missing config"],
)
def test_healthcheck_with_a_bad_setting_is_one_line_and_exit_2(
    args: list[str], config: str | None, named: str, tmp_path: Path
) -> None:
    """`healthcheck` checks its flags and config file as `run` does: a bad one is exit 2 with
    one line naming it, never a verdict on a checkpoint it may not have found."""
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
    done = cli(["healthcheck", *args], cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert named in done.stderr


def test_healthcheck_reads_a_config_as_run_does_whatever_the_length_of_its_numbers(
    tmp_path: Path,
) -> None:
    """A whole number of 5,000 digits in the config is taken by `run`; `healthcheck` reads the
    same file to the same settings (no traceback from the interpreter's digit limit)."""
    (tmp_path / "c.toml").write_text("max_open_files = 1" + "0" * 5000 + "\n")
    done = cli(["healthcheck", "--config", "c.toml"], cwd=tmp_path, timeout=60)
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.startswith("unhealthy: no worker holds")


@pytest.mark.parametrize("how", ["WORKER_CHECKPOINT", "worker_checkpoint", "config file"])
def test_healthcheck_finds_the_checkpoint_as_run_does(how: str, tmp_path: Path) -> None:
    """The checkpoint from a variable in any case, or from the config file WORKER_CONFIG names:
    a live worker's lock there is healthy."""
    lock = WorkerLock(tmp_path / "elsewhere.json")
    lock.acquire()
    try:
        if how == "config file":
            (tmp_path / "c.toml").write_text('checkpoint = "elsewhere.json"\n')
            env = worker_env(WORKER_CONFIG="c.toml")
        else:
            env = worker_env(**{how: "elsewhere.json"})
        done = cli(["healthcheck"], cwd=tmp_path, env=env, timeout=60)
        assert done.returncode == 0, done.stdout
    finally:
        lock.release()


def test_healthcheck_imports_only_the_standard_library(tmp_path: Path) -> None:
    """The healthcheck path loads none of the heavy dependencies."""
    heavy = ("numpy", "anyio", "structlog", "aiofiles", "rich", "prometheus_client")
    code = (
        "import service.cli, service.health, sys; "
        f"sys.exit(any(m in sys.modules for m in {heavy!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
