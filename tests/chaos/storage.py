"""Part `storage`: EIO, ENOSPC and EROFS injected into write, fsync and rename (strace); a full
disk and a read-only directory (tmpfs); a directory in the checkpoint's place; a failing
heartbeat; a slow disk at completion; and the durability protocol seen in a syscall trace."""

from __future__ import annotations

import errno
import functools
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.chaos.checks import (
    check_on_disk,
    expect_completed,
    expect_failure,
    same_figures,
    temp_files,
)
from tests.chaos.faults import failing, fill, remount, slow_fsync, tmpfs
from tests.chaos.inputs import noisy_input, prefix_oracle
from tests.chaos.steps import finish_run, fresh, graceful_partial_run, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, INPUT, MAX_LINE, PACED, RATE, RESULT, start_worker
from tests.oracle import expected_of
from tests.strace import calls_in, strace_prefix

__all__ = ["completion_on_a_slow_disk", "heartbeat_fault", "part"]


def _injected_fault(
    tally: Tally, cwd: Path, syscall: str, error: str, when: int, rng: random.Random
) -> None:
    """One syscall of the checkpoint writes fails (strace): exit 1, previous checkpoint whole."""
    label = f"storage/{syscall} {error} at call {when}"
    data = noisy_input(rng, RATE * 2)
    (cwd / INPUT).write_bytes(data)
    log = cwd.parent / f"{cwd.name}.strace"
    prefix = failing(syscall, error, when=when, log=log)
    # Log lines are write()s too: at level error the only one is the error line, the first
    # write of the main thread, so an injection counted per thread from the 2nd never hits it.
    quiet = ["--log-level", "error"] if syscall == "write" else []
    worker = start_worker(cwd, [*PACED, *quiet], prefix=prefix)
    worker.finish(timeout=60)
    injected = "INJECTED" in log.read_text(errors="replace")
    log.unlink()
    if not injected:
        tally.observe("syscall faults planned but never reached (run ended first)")
        if worker.code != 0:
            tally.violation(label, f"exit {worker.code} with no fault injected")
    else:
        tally.fault(f"{error} injected into {syscall}")
        strerror = os.strerror(getattr(errno, error))
        expect_failure(tally, label, worker, mentions=[(CHECKPOINT, RESULT), strerror])
        if temp_files(cwd) or temp_files(cwd, RESULT):
            tally.violation(label, "the failed write left its temp file behind")
        disk = check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
        saved = worker.named("checkpoint_saved")
        if saved and (disk is None or disk["offset"] < saved[-1]["offset"]):
            tally.wrong(label, f"checkpoint on disk {disk} is older than the last saved one")
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _disk_full(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The checkpoint's file system fills up mid-run, then is full at start: exit 1 each time."""
    label = "storage/disk full"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    with tmpfs(cwd / "ckpt") as ckpt:
        files = ["--checkpoint", f"ckpt/{CHECKPOINT}", "--result", f"ckpt/{RESULT}"]
        worker = start_worker(cwd, [*PACED, *files])
        worker.wait_ready()
        time.sleep(rng.uniform(0.2, 0.5))
        filler = fill(ckpt)
        tally.fault("disk full mid-run (tmpfs)")
        worker.finish(timeout=30)
        expect_failure(tally, label, worker, mentions=[CHECKPOINT, "No space left on device"])
        disk = check_on_disk(tally, label, ckpt / CHECKPOINT, oracle)
        saved = worker.named("checkpoint_saved")
        if saved and (disk is None or not same_figures(disk, saved[-1])):
            tally.wrong(label, f"checkpoint on disk {disk} is not the last saved {saved[-1]}")
        if temp_files(ckpt):
            tally.violation(label, "the failed write left its temp file behind")
        before = (ckpt / CHECKPOINT).read_bytes() if disk is not None else None
        tally.restart()
        again = start_worker(cwd, [*PACED, *files])
        again.finish(timeout=30)
        tally.fault("disk full at start (tmpfs)")
        expect_failure(tally, label + " at start", again, mentions=["No space left on device"])
        after = (ckpt / CHECKPOINT).read_bytes() if disk is not None else None
        if before != after:
            tally.violation(label, "the checkpoint changed while the disk was full")
        filler.unlink()
        expected = expected_of(data, max_line_bytes=MAX_LINE)
        finish_run(tally, label, cwd, expected, files, results=ckpt)


def _read_only(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The checkpoint's directory is read-only at start: exit 1, checkpoint byte-identical."""
    label = "storage/read-only directory"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    with tmpfs(cwd / "ckpt", "1m") as ckpt:
        files = ["--checkpoint", f"ckpt/{CHECKPOINT}", "--result", f"ckpt/{RESULT}"]
        before = graceful_partial_run(tally, label, cwd, rng, [*PACED, *files], files[1])
        remount(ckpt, "ro")  # a worker holds the lock open for writing: only now can it be ro
        tally.fault("read-only checkpoint directory (remount ro)")
        worker = start_worker(cwd, [*PACED, *files])
        worker.finish(timeout=30)
        expect_failure(tally, label, worker, mentions=["Read-only file system"])
        if (ckpt / CHECKPOINT).read_bytes() != before:
            tally.violation(label, "the checkpoint changed on a read-only file system")
        remount(ckpt, "rw")
        expected = expected_of(data, max_line_bytes=MAX_LINE)
        finish_run(tally, label, cwd, expected, files, results=ckpt)


def _checkpoint_becomes_directory(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The checkpoint is replaced by a directory mid-run, then found as one at start."""
    label = "storage/checkpoint replaced by a directory"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    path, aside = cwd / CHECKPOINT, cwd / "aside.json"
    worker = start_worker(cwd, PACED)
    worker.wait_ready()
    time.sleep(rng.uniform(0.2, 0.5))
    while True:  # the worker may rename a new checkpoint in between: take that one aside too
        if path.is_file():
            path.replace(aside)
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    tally.fault("checkpoint replaced by a directory mid-run")
    worker.finish(timeout=30)
    expect_failure(tally, label, worker, mentions=[CHECKPOINT])
    if not path.is_dir():
        tally.violation(label, "the directory in the checkpoint's place was removed")
    tally.restart()
    again = start_worker(cwd, PACED)
    again.finish(timeout=30)
    tally.fault("checkpoint is a directory at start")
    expect_failure(tally, label + " at start", again, mentions=[CHECKPOINT])
    if not path.is_dir() or any(path.iterdir()):
        tally.violation(label, "the directory in the checkpoint's place was changed")
    path.rmdir()
    aside.replace(path)
    check_on_disk(tally, label, path, prefix_oracle(data))
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def heartbeat_fault(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The heartbeat's touch of the lock file fails (EIO): one error line, no traceback."""
    label = "storage/heartbeat EIO"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    prefix = failing("utimensat", "EIO")
    worker = start_worker(cwd, [*PACED, "--checkpoint-interval", "5"], prefix=prefix)
    worker.finish(timeout=30)
    tally.fault("EIO injected into the heartbeat (utimensat)")
    expect_failure(tally, label, worker, mentions=[".lock", "Input/output error"])
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def completion_on_a_slow_disk(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Every fsync takes 40 ms: a timer save queued behind the completion save must not
    overwrite it, so the last checkpoint says completed."""
    label = "storage/completion on a slow disk"
    data = noisy_input(rng, RATE // 2)
    (cwd / INPUT).write_bytes(data)
    worker = start_worker(cwd, PACED, prefix=slow_fsync(0.04))
    worker.finish(timeout=60)
    tally.fault("fsync slowed 40 ms to the end of the input")
    expect_completed(tally, label, worker, expected_of(data, max_line_bytes=MAX_LINE), cwd)
    reasons = [e.get("reason") for e in worker.named("checkpoint_saved")]
    if "completed" in reasons and reasons[-1] != "completed":
        tally.violation(label, f"saves after the completion save: {reasons[-3:]}")


_FD_PATH = re.compile(r"^\d+<([^>]*)>")
_RENAME = re.compile(r'^"([^"]*)", "([^"]*)"')


def _durability_trace(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Every checkpoint and result write, seen by strace: data fsynced before its rename, and the
    directory fsynced after it. A SIGKILL cannot show a missing fsync; this trace can."""
    label = "storage/durability protocol"
    data = noisy_input(rng, RATE)
    (cwd / INPUT).write_bytes(data)
    log = cwd.parent / "durability.strace"
    prefix = strace_prefix(
        log, "openat,write,fsync,fdatasync,rename,renameat,renameat2,close", paths=True
    )
    worker = start_worker(cwd, PACED, prefix=prefix)
    worker.finish(timeout=60)
    expect_completed(tally, label, worker, expected_of(data, max_line_bytes=MAX_LINE), cwd)
    written: set[str] = set()
    synced: set[str] = set()
    awaiting_directory_sync: dict[int, str] = {}
    verified = 0
    for pid, name, arguments, result in calls_in(log.read_text(errors="replace")):
        fd_path = _FD_PATH.match(arguments)
        path = fd_path.group(1) if fd_path else ""
        if name == "write" and path.endswith(".tmp"):
            written.add(path)
            synced.discard(path)
        elif name in ("fsync", "fdatasync") and result == 0:
            if path in written:
                synced.add(path)
            if awaiting_directory_sync.get(pid) == path:
                del awaiting_directory_sync[pid]
                verified += 1
        elif name.startswith("rename") and result == 0:
            renamed = _RENAME.match(arguments)
            if not renamed:
                continue
            source, target = renamed.groups()
            if not source.endswith(".tmp"):
                continue
            if source not in synced:
                tally.violation(label, f"{source} renamed onto {target} before an fsync")
            if pid in awaiting_directory_sync:
                tally.violation(label, "a rename came before the directory fsync of the last")
            awaiting_directory_sync[pid] = str(Path(source).parent)
    if awaiting_directory_sync:
        tally.violation(
            label, f"renames never followed by a directory fsync: {awaiting_directory_sync}"
        )
    if verified < 3:
        tally.violation(label, f"only {verified} atomic writes seen in the trace")
    tally.observe("atomic writes traced: fsync, rename, directory fsync", verified)


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Disk full, EIO/ENOSPC/EROFS in write, fsync and rename, read-only, a directory in the way."""
    faults = [("fsync", "EIO"), ("write", "ENOSPC"), ("rename", "EROFS")]
    if not short:
        faults += [
            ("rename", "EIO"),
            ("fsync", "ENOSPC"),
            ("write", "EIO"),
            ("rename", "ENOSPC"),
            ("fsync", "EROFS"),
        ]
    repeats = 1 if short else 4
    seeds = [rng.randrange(2**32) for _ in range(6)]
    jobs: list[Callable[[], None]] = []
    for index, (syscall, error) in enumerate(faults * repeats):
        pick = random.Random(seeds[0] + index)
        when = pick.randint(2, 7)
        jobs.append(
            functools.partial(
                _injected_fault, tally, fresh(root, f"inject{index}"), syscall, error, when, pick
            )
        )
    scenarios: list[Callable[[Tally, Path, random.Random], None]] = [
        _disk_full,
        _read_only,
        _checkpoint_becomes_directory,
        _durability_trace,
    ]
    if not short:  # short: tests/test_chaos.py runs these as regression tests of their own
        scenarios += [heartbeat_fault, completion_on_a_slow_disk]
    for index, scenario in enumerate(scenarios):
        jobs.append(
            functools.partial(
                scenario, tally, fresh(root, f"scenario{index}"), random.Random(seeds[1] + index)
            )
        )
    parallel(tally, jobs)
