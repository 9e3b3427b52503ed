"""Part `shutdown`: SIGTERM while reading flat out, while checkpointing on a slow disk, while
paced, while following an idle file, and with every fsync stalled: exit within the timeout,
the final checkpoint whole."""

from __future__ import annotations

import functools
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.chaos.checks import (
    check_on_disk,
    expect_failure,
    expect_no_traceback,
    expect_shutdown_save,
)
from tests.chaos.faults import slow_fsync
from tests.chaos.inputs import Oracle, RepeatedInput, noisy_block, noisy_input, prefix_oracle
from tests.chaos.steps import finish_run, fresh, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import (
    CHECKPOINT,
    FOLLOW,
    INPUT,
    MAX_LINE,
    PACED,
    RATE,
    SHUTDOWN_TIMEOUT,
    start_worker,
)
from tests.oracle import expected_of

__all__ = ["part", "shutdown_on_a_stalled_disk"]


def _shutdown_case(tally: Tally, cwd: Path, rng: random.Random, case: str) -> None:
    """SIGTERM in one situation: exit 0 within the shutdown timeout, final checkpoint whole."""
    label = f"shutdown/{case}"
    prefix: Sequence[str] = ()
    args = list(PACED)
    if case == "reading at full speed":
        big = RepeatedInput(noisy_block(rng), 60)
        big.write(cwd / INPUT)
        oracle: Oracle = big.at
        expected = big.expected
        args = ["--max-line-bytes", str(MAX_LINE)]
    else:
        data = noisy_input(rng, RATE * 4, final_newline=True)
        (cwd / INPUT).write_bytes(data)
        oracle = prefix_oracle(data, following=case == "following an idle file")
        expected = expected_of(data, max_line_bytes=MAX_LINE)
        if case == "checkpointing on a slow disk":
            args += ["--checkpoint-interval", "0.001"]
            prefix = slow_fsync(0.04)
        elif case == "following an idle file":
            args = list(FOLLOW)
    worker = start_worker(cwd, args, prefix=prefix)
    if case == "following an idle file":
        worker.wait_for_or_none("caught_up", timeout=30)
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        worker.wait_ready()
        time.sleep(rng.uniform(0.05, 0.5))
    sent = worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    assert worker.ended is not None
    took = worker.ended - sent
    tally.fault(f"SIGTERM while {case}")
    tally.peak(f"shutdown while {case} (s)", took)
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code}, expected 0")
    if took > SHUTDOWN_TIMEOUT:
        tally.violation(label, f"{took:.2f} s from SIGTERM to exit > {SHUTDOWN_TIMEOUT} s")
    expect_no_traceback(tally, label, worker)
    check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
    if not worker.completed:
        expect_shutdown_save(tally, label, worker, cwd / CHECKPOINT, None)
    finish_run(tally, label, cwd, expected)
    (cwd / INPUT).unlink()  # up to 60 MB: not kept for pytest's last three runs


def shutdown_on_a_stalled_disk(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Every fsync takes 0.8 s: the worker still exits within shutdown_timeout (plus the one
    fsync in progress, which no process can interrupt), with a whole checkpoint."""
    label = "shutdown/stalled disk"
    data = noisy_input(rng, RATE * 4, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    timeout, stall = 1.0, 0.8
    prefix = slow_fsync(stall)
    args = [*PACED, "--checkpoint-interval", "0.2", "--shutdown-timeout", str(timeout)]
    worker = start_worker(cwd, args, prefix=prefix)
    worker.wait_ready()
    time.sleep(rng.uniform(0.3, 1.0))
    sent = worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    assert worker.ended is not None
    took = worker.ended - sent
    tally.fault("SIGTERM with every fsync stalled 0.8 s")
    tally.peak("shutdown with fsync stalled 0.8 s, shutdown_timeout 1 s (s)", took)
    if took > timeout + stall + 0.5:
        tally.violation(label, f"{took:.2f} s from SIGTERM to exit (shutdown_timeout {timeout} s)")
    if worker.code == 1:
        expect_failure(tally, label, worker, mentions=["shutdown_timeout"])
    elif worker.code != 0:
        tally.violation(label, f"exit {worker.code}, expected 0 or 1")
    expect_no_traceback(tally, label, worker)
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """SIGTERM while reading flat out, while checkpointing, while paced, while idle-following."""
    cases = [
        "reading at full speed",
        "checkpointing on a slow disk",
        "paced",
        "following an idle file",
    ]
    rounds = 1 if short else 6
    seeds = [rng.randrange(2**32) for _ in range(2)]
    jobs: list[Callable[[], None]] = [
        functools.partial(
            _shutdown_case, tally, fresh(root, f"case{i}"), random.Random(seeds[0] + i), case
        )
        for i, case in enumerate(cases * rounds)
    ]
    jobs += [
        functools.partial(
            shutdown_on_a_stalled_disk,
            tally,
            fresh(root, f"stalled{i}"),
            random.Random(seeds[1] + i),
        )
        for i in range(0 if short else 4)  # short: a regression test of its own
    ]
    parallel(tally, jobs)
