"""Part `crashes`: SIGKILL at random instants of paced and followed runs, each followed by a
restart; some kills land while fsync is slowed (strace), so a write is caught half-way."""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from tests.chaos.checks import check_on_disk, expect_no_traceback, load_json, temp_files
from tests.chaos.faults import slow_fsync
from tests.chaos.inputs import Appender, noisy_input, prefix_oracle
from tests.chaos.steps import finish_run, fresh, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, INPUT, MAX_LINE, PACED, RATE, start_worker
from tests.oracle import expected_of
from tests.processes import WorkerProcess

__all__ = ["part"]


def _crash_life(
    tally: Tally, label: str, cwd: Path, args: Sequence[str], rng: random.Random, *, slow: bool
) -> WorkerProcess:
    """One life of a worker ended by SIGKILL at a random instant (or by completing first)."""
    prefix = slow_fsync(0.02) if slow else ()
    worker = start_worker(cwd, args, prefix=prefix)
    if not slow and rng.random() < 0.1:
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere in start-up
    else:
        if not worker.wait_ready():
            tally.violation(label, f"never ready: {worker.errors or worker.noise}")
        time.sleep(rng.uniform(0.0, 0.35))
    worker.signal(signal.SIGKILL)
    worker.finish(timeout=30)
    return worker


def _crash_chain(tally: Tally, work: Path, kills: int, rng: random.Random, *, follow: bool) -> None:
    """Kill, restart, repeat; then finish the input and compare with the oracle."""
    done = cycle = 0
    while done < kills:
        cycle += 1
        cwd = fresh(work, f"cycle{cycle}")
        label = f"crashes/{'follow' if follow else 'paced'}/cycle{cycle}"
        planned = min(kills - done, 15)
        appender: Appender | None = None
        if follow:
            appender = Appender(cwd / INPUT, rng.randrange(2**32))
            args = [*PACED, "--follow", "--poll-interval", "0.02"]
        else:
            data = noisy_input(rng, int(RATE * 0.2 * planned))
            (cwd / INPUT).write_bytes(data)
            args = list(PACED)
        try:
            for _ in range(planned):
                slow = rng.random() < 0.4 and shutil.which("strace") is not None
                before = load_json(cwd / CHECKPOINT)
                worker = _crash_life(tally, label, cwd, args, rng, slow=slow)
                if worker.completed:
                    break  # the kill came after the end: nothing left to crash
                if worker.code not in (-signal.SIGKILL, 128 + signal.SIGKILL):
                    tally.violation(label, f"exit {worker.code} instead of death by SIGKILL")
                    expect_no_traceback(tally, label, worker)
                done += 1
                tally.fault(f"SIGKILL at a random instant ({'follow' if follow else 'paced'})")
                if slow:
                    tally.observe("SIGKILLs with fsync slowed 20 ms (strace)")
                if temp_files(cwd):
                    tally.observe("SIGKILLs that left a checkpoint half-written (temp file)")
                snapshot = (cwd / INPUT).read_bytes()
                after = check_on_disk(
                    tally, label, cwd / CHECKPOINT, prefix_oracle(snapshot, following=follow)
                )
                if before is not None and (after is None or after["offset"] < before["offset"]):
                    tally.violation(label, f"checkpoint lost or gone back: {before} -> {after}")
                tally.restart()
        finally:
            if appender is not None:
                appender.stop()
        data = (cwd / INPUT).read_bytes()
        finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))
        if temp_files(cwd):
            tally.violation(label, f"temp files left after a clean run: {temp_files(cwd)}")


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """SIGKILL at random instants of paced and followed runs, each followed by a restart."""
    total = 30 if short else 500
    followed = total // 2
    seeds = (rng.randrange(2**32), rng.randrange(2**32))
    parallel(
        tally,
        [
            lambda: _crash_chain(
                tally, root / "paced", total - followed, random.Random(seeds[0]), follow=False
            ),
            lambda: _crash_chain(
                tally, root / "follow", followed, random.Random(seeds[1]), follow=True
            ),
        ],
    )
