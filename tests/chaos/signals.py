"""Part `signals`: SIGTERM and SIGINT storms at random instants (also during start-up), a second
signal while a save waits on a slowed fsync, and two signals milliseconds apart."""

from __future__ import annotations

import functools
import random
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.chaos.checks import (
    bytes_or_none,
    check_on_disk,
    expect_no_traceback,
    expect_shutdown_save,
)
from tests.chaos.faults import slow_fsync
from tests.chaos.inputs import noisy_input, prefix_oracle
from tests.chaos.steps import finish_run, fresh, graceful_partial_run, parallel
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, INPUT, MAX_LINE, PACED, RATE, start_worker
from tests.oracle import expected_of

__all__ = ["part", "second_signal_slow_save"]


def _graceful_storm(
    tally: Tally, cwd: Path, stops: int, signals: Sequence[int], rng: random.Random
) -> None:
    """Repeated graceful stops at random instants: each exits 0 after a shutdown checkpoint."""
    label = "signals/" + "+".join(signal.Signals(n).name for n in signals) + " storm"
    data = noisy_input(rng, int(RATE * 0.6 * stops))
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    for _ in range(stops):
        signum = rng.choice(signals)
        name = signal.Signals(signum).name
        before = bytes_or_none(cwd / CHECKPOINT)
        worker = start_worker(cwd, PACED)
        during_start = rng.random() < 0.2
        if during_start:  # imports, settings, lock, checkpoint: the receiver is not there yet
            worker.wait_catching(signal.SIGTERM)  # SIGINT is caught from the interpreter's start
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            worker.wait_ready()
            time.sleep(rng.uniform(0.0, 0.4))
        sent = worker.signal(signum)
        worker.finish(timeout=30)
        assert worker.ended is not None
        when = "during start-up" if during_start else "after start-up"
        tally.peak(f"graceful stop {when}, signal to exit (s)", worker.ended - sent)
        tally.fault(f"{name} graceful stop" + (" during start-up" if during_start else ""))
        expect_no_traceback(tally, label, worker)
        check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
        if worker.named("completed"):
            # The input ran out first; a signal landing in the last instants of the exit may
            # end it (130/143 or death by the signal): the answer is already on disk.
            if worker.code not in (0, 128 + signum, -signum):
                tally.violation(label, f"exit {worker.code} after completing: {worker.tail()}")
            break
        if worker.code != 0:
            tally.violation(label, f"exit {worker.code} after {name} {when}: {worker.tail()}")
        if not worker.named("shutdown_requested", signal=name):
            tally.violation(label, f"no shutdown_requested signal={name}")
        expect_shutdown_save(tally, label, worker, cwd / CHECKPOINT, before)
        tally.restart()
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def second_signal_slow_save(
    tally: Tally, cwd: Path, first: int, second: int, rng: random.Random, *, during: str
) -> None:
    """A second signal while a save waits on a slowed fsync: exit 128+n at once, checkpoint whole.

    `during` the "final save" (no timer saves), or a "timer save" still in flight when the first
    signal came, so the second lands while the tasks unwind, before the final save starts.
    """
    label = f"signals/{signal.Signals(first).name} then {signal.Signals(second).name} ({during})"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    before = graceful_partial_run(tally, label, cwd, rng)
    delay = 1.5
    prefix = slow_fsync(delay)
    interval = "1000" if during == "final save" else "0.01"
    worker = start_worker(cwd, [*PACED, "--checkpoint-interval", interval], prefix=prefix)
    worker.wait_ready()
    time.sleep(rng.uniform(0.1, 0.4))
    worker.signal(first)
    if worker.wait_for_or_none("shutdown_requested", timeout=10) is None:
        tally.violation(label, "no shutdown_requested after the first signal")
    time.sleep(0.2)  # inside the save's first, slowed, fsync
    sent = worker.signal(second)
    worker.finish(timeout=30)
    assert worker.ended is not None
    tally.fault(f"second signal during a slowed {during}")
    tally.peak(f"second signal to exit, {during} fsync slowed 1.5 s (s)", worker.ended - sent)
    if worker.code != 128 + second:
        tally.violation(label, f"exit {worker.code}, expected {128 + second}")
    if worker.named("checkpoint_saved", reason="shutdown"):
        tally.violation(label, "the final save went on although the second signal came first")
    if worker.ended - sent > delay + 1.0:
        tally.violation(label, f"exit {worker.ended - sent:.2f} s after the second signal")
    expect_no_traceback(tally, label, worker)
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
    if during == "final save" and (cwd / CHECKPOINT).read_bytes() != before:
        tally.violation(label, "the checkpoint changed although the final save was cut short")
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _double_signal_race(tally: Tally, cwd: Path, rounds: int, rng: random.Random) -> None:
    """Two signals a few milliseconds apart: 0 or 128+n, never a traceback; checkpoint whole."""
    label = "signals/double-signal race"
    data = noisy_input(rng, int(RATE * 0.25 * rounds))
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    for _ in range(rounds):
        first, second = (
            rng.choice([signal.SIGTERM, signal.SIGINT]),
            rng.choice([signal.SIGTERM, signal.SIGINT]),
        )
        worker = start_worker(cwd, PACED)
        worker.wait_ready()
        time.sleep(rng.uniform(0.0, 0.3))
        worker.signal(first)
        time.sleep(rng.uniform(0.0, 0.03))
        worker.signal(second)
        worker.finish(timeout=30)
        tally.fault("two signals milliseconds apart")
        expect_no_traceback(tally, label, worker)
        if worker.code == -second and worker.named("worker_stopped"):
            # The worker had finished; the interpreter was tearing down, handlers reset. Docker
            # and shells report this death by signal n as 128+n, the same as exiting with it.
            tally.observe("second signal after worker_stopped: died by it (status 128+n)")
        elif worker.code not in (0, 128 + second):
            tally.violation(label, f"exit {worker.code}, expected 0 or {128 + second}")
        check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
        if worker.completed:
            break
        tally.restart()
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def part(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """SIGTERM and SIGINT storms, and a second signal during shutdown."""
    both = (signal.SIGTERM, signal.SIGINT)
    storms: list[Sequence[int]] = [both] if short else [(signal.SIGTERM,), (signal.SIGINT,), both]
    # Short: the timer-save case is tests/test_chaos.py's regression test of its own.
    pairs = [(signal.SIGINT, signal.SIGTERM, "final save")]
    if not short:
        pairs += [
            (signal.SIGTERM, signal.SIGTERM, "final save"),
            (signal.SIGINT, signal.SIGINT, "final save"),
            (signal.SIGTERM, signal.SIGINT, "final save"),
            (signal.SIGTERM, signal.SIGINT, "timer save"),
            (signal.SIGINT, signal.SIGTERM, "timer save"),
            (signal.SIGTERM, signal.SIGTERM, "timer save"),
            (signal.SIGINT, signal.SIGINT, "timer save"),
        ] * 2
    jobs: list[Callable[[], None]] = [
        functools.partial(
            _graceful_storm,
            tally,
            fresh(root, f"storm{i}"),
            4 if short else 40,
            signals,
            random.Random(rng.randrange(2**32)),
        )
        for i, signals in enumerate(storms)
    ]
    jobs += [
        functools.partial(
            second_signal_slow_save,
            tally,
            fresh(root, f"second{i}"),
            first,
            second,
            random.Random(rng.randrange(2**32)),
            during=during,
        )
        for i, (first, second, during) in enumerate(pairs)
    ]
    jobs += [
        functools.partial(
            _double_signal_race,
            tally,
            fresh(root, f"race{i}"),
            3 if short else 30,
            random.Random(rng.randrange(2**32)),
        )
        for i in range(1 if short else 2)
    ]
    parallel(tally, jobs)
