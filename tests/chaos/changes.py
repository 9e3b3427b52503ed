"""Part `changes`: the input replaced, truncated, appended to, deleted or turned into a directory,
before a restart or while followed: `input_changed` under `fail` and `restart`, or, for appends,
every line counted once, numbers split across writes and across a restart."""

from __future__ import annotations

import functools
import json
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.chaos.checks import (
    check_on_disk,
    expect_completed,
    expect_failure,
    expect_no_traceback,
    load_json,
)
from tests.chaos.inputs import noisy_input, prefix_oracle
from tests.chaos.steps import finish_run, fresh, graceful_partial_run, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, FOLLOW, INPUT, MAX_LINE, RATE, start_worker
from tests.oracle import Expected, expected_of
from tests.processes import WorkerProcess

__all__ = ["part"]


def _same_size_replacement(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Replaced by same-size content before a restart: input_changed; fail or start over."""
    label = "changes/same-size replacement"
    data = noisy_input(rng, RATE * 3, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    before = graceful_partial_run(tally, label, cwd, rng)
    changed = bytearray(data)
    index = next(i for i, byte in enumerate(changed) if 48 <= byte <= 57)
    changed[index] = 48 + (changed[index] - 48 + 1) % 10
    (cwd / INPUT).write_bytes(bytes(changed))
    tally.fault("input replaced by same-size content")
    _expect_change_refused(tally, label, cwd, before, "content_changed")
    _expect_change_restarts(tally, label, cwd, expected_of(bytes(changed), max_line_bytes=MAX_LINE))


def _expect_change_refused(tally: Tally, label: str, cwd: Path, before: bytes, reason: str) -> None:
    tally.restart()
    worker = start_worker(cwd, ["--max-line-bytes", str(MAX_LINE)])
    worker.finish(timeout=60)
    expect_failure(tally, label, worker, mentions=[INPUT])
    if not worker.named("input_changed", reason=reason, action="fail"):
        tally.violation(label, f"no input_changed reason={reason} action=fail")
    if (cwd / CHECKPOINT).read_bytes() != before:
        tally.violation(label, "the checkpoint changed although the run refused the input")


def _expect_change_restarts(tally: Tally, label: str, cwd: Path, expected: Expected) -> None:
    tally.restart()
    worker = start_worker(cwd, ["--max-line-bytes", str(MAX_LINE), "--on-input-change", "restart"])
    worker.finish(timeout=60)
    if not worker.named("input_changed", action="restart", level="warning"):
        tally.violation(label, "no input_changed action=restart warning")
    expect_completed(tally, label + " (restart)", worker, expected, cwd)


def _truncated_below_offset(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Truncated below the checkpoint's offset: input_changed truncated; fail or start over."""
    label = "changes/truncated"
    data = noisy_input(rng, RATE * 3, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    before = graceful_partial_run(tally, label, cwd, rng)
    offset = json.loads(before)["offset"]
    shorter = data[: rng.randint(0, max(0, offset - 1))]
    (cwd / INPUT).write_bytes(shorter)
    tally.fault("input truncated below the offset")
    _expect_change_refused(tally, label, cwd, before, "truncated")
    _expect_change_restarts(tally, label, cwd, expected_of(shorter, max_line_bytes=MAX_LINE))


def _appended_while_following(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Appends while following, numbers split across writes and across a restart: counted once."""
    label = "changes/appended while following"
    path = cwd / INPUT
    path.write_bytes(b"1\n2\n")
    worker = start_worker(cwd, FOLLOW)
    if worker.wait_for_or_none("caught_up", offset=4) is None:
        tally.violation(label, "never caught up with the first lines")

    def append(piece: bytes) -> None:
        with path.open("ab") as handle:
            handle.write(piece)

    append(b"12")
    time.sleep(0.25)  # several polls: the worker holds "12" until its '\n' arrives
    append(b"345\n")
    tally.fault("number split across two appends")
    more = noisy_input(rng, 400, final_newline=True)
    cuts = sorted(rng.sample(range(1, len(more)), 30))
    for start, end in zip([0, *cuts], [*cuts, len(more)], strict=True):
        append(more[start:end])
        time.sleep(rng.uniform(0.0, 0.03))
    tally.fault("appends while following", 31)
    data = path.read_bytes()
    want = expected_of(data, max_line_bytes=MAX_LINE, following=True)
    if worker.wait_for_or_none("caught_up", timeout=30, offset=want.offset) is None:
        tally.violation(label, f"never caught up at offset {want.offset}")
    append(b"77")  # held, unconsumed, when the worker stops
    time.sleep(0.2)
    worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code} after SIGTERM while following")
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(path.read_bytes(), following=True))
    tally.restart()
    worker = start_worker(cwd, FOLLOW)
    worker.wait_ready()
    append(b"8\n")
    tally.fault("number split across a restart")
    data = path.read_bytes()
    want = expected_of(data, max_line_bytes=MAX_LINE, following=True)
    caught = worker.wait_for_or_none("caught_up", timeout=30, offset=want.offset)
    if caught is None or caught.get("sum") != want.sum:
        tally.wrong(label, f"caught up with {caught}, oracle sum {want.sum} at {want.offset}")
    worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    tally.final(label + " (followed)", load_json(cwd / CHECKPOINT) or {}, want)
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _follow_until_caught_up(
    tally: Tally, label: str, cwd: Path, args: Sequence[str]
) -> WorkerProcess:
    worker = start_worker(cwd, [*FOLLOW, *args])
    want = expected_of((cwd / INPUT).read_bytes(), max_line_bytes=MAX_LINE, following=True)
    if worker.wait_for_or_none("caught_up", timeout=30, offset=want.offset) is None:
        tally.violation(label, f"never caught up at offset {want.offset}")
    time.sleep(0.1)  # the checkpoint timer writes the caught-up position
    return worker


def _changed_while_following(
    tally: Tally, cwd: Path, rng: random.Random, *, change: str, policy: str
) -> None:
    """Deleted, truncated, or replaced by a directory while followed: input_changed by policy."""
    label = f"changes/{change} while following ({policy})"
    path = cwd / INPUT
    data = noisy_input(rng, 300, final_newline=True)
    path.write_bytes(data)
    worker = _follow_until_caught_up(tally, label, cwd, ["--on-input-change", policy])
    if change == "deleted":
        path.unlink()
        reason = "deleted"
    elif change == "truncated":
        path.write_bytes(data[: len(data) // 3])  # in place: same inode, fewer bytes
        reason = "truncated"
    else:
        path.rename(cwd / "aside.txt")
        path.mkdir()
        reason = "replaced"  # or "deleted", if a poll came between the two calls
    tally.fault(f"input {change} while following")
    if policy == "fail":
        worker.finish(timeout=30)
        expect_failure(tally, label, worker, mentions=[INPUT])
        reasons = {e.get("reason") for e in worker.named("input_changed", action="fail")}
        if not reasons & {reason, "deleted" if change == "directory" else reason}:
            tally.violation(label, f"input_changed reasons {reasons}, expected {reason}")
        check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data, following=True))
        return
    if worker.wait_for_or_none("input_changed", timeout=10, action="restart") is None:
        tally.violation(label, f"no input_changed action=restart (reason {reason})")
    if change == "directory":
        time.sleep(0.2)
        path.rmdir()
    fresh = noisy_input(rng, 200, final_newline=True)
    if change != "truncated":
        path.write_bytes(fresh)
    else:
        fresh = path.read_bytes()
    want = expected_of(fresh, max_line_bytes=MAX_LINE, following=True)
    caught = worker.wait_for_or_none("caught_up", timeout=30, offset=want.offset, sum=want.sum)
    if caught is None:
        tally.wrong(label, f"never caught up with the new input: oracle {want}")
    worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code} after SIGTERM")
    expect_no_traceback(tally, label, worker)
    tally.final(label, load_json(cwd / CHECKPOINT) or {}, want)


def _directory_before_restart(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The input is a directory when the worker starts: exit 1, checkpoint untouched."""
    label = "changes/input replaced by a directory"
    data = noisy_input(rng, RATE * 3, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    before = graceful_partial_run(tally, label, cwd, rng)
    (cwd / INPUT).rename(cwd / "aside.txt")
    (cwd / INPUT).mkdir()
    tally.fault("input replaced by a directory before a restart")
    tally.restart()
    worker = start_worker(cwd, ["--max-line-bytes", str(MAX_LINE)])
    worker.finish(timeout=30)
    expect_failure(tally, label, worker, mentions=[INPUT])
    if (cwd / CHECKPOINT).read_bytes() != before:
        tally.violation(label, "the checkpoint changed")
    (cwd / INPUT).rmdir()
    (cwd / "aside.txt").rename(cwd / INPUT)
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Replaced, truncated, appended, deleted, turned into a directory: each its behaviour."""
    scenarios: list[Callable[[Tally, Path, random.Random], None]] = [
        _same_size_replacement,
        _truncated_below_offset,
        _appended_while_following,
        _directory_before_restart,
    ]
    for change in ("deleted", "truncated", "directory"):
        for policy in ("fail", "restart"):
            if short and policy == "restart" and change != "deleted":
                continue
            scenarios.append(
                functools.partial(_changed_while_following, change=change, policy=policy)
            )
    jobs: list[Callable[[], None]] = []
    for round_ in range(1 if short else 3):
        for index, scenario in enumerate(scenarios):
            jobs.append(
                functools.partial(
                    scenario,
                    tally,
                    fresh(root, f"round{round_}-{index}"),
                    random.Random(rng.randrange(2**32)),
                )
            )
    parallel(tally, jobs)
