"""Steps the parts share: a fresh directory per scenario, scenarios two at a time, a graceful
partial run to start from, and the final run without faults that every scenario ends with."""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.chaos.checks import expect_completed, load_json
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, MAX_LINE, PACED, start_worker
from tests.oracle import Expected
from tests.processes import Unavailable

__all__ = ["finish_run", "fresh", "graceful_partial_run", "parallel"]


def parallel(tally: Tally, jobs: Sequence[Callable[[], None]], workers: int = 2) -> None:
    """Run independent scenarios two at a time (two cores); a crash of one is a violation."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        for future in futures:
            try:
                future.result()
            except Unavailable as why:
                tally.skip(str(why))
            except Exception:
                tally.violation("campaign", f"scenario crashed:\n{traceback.format_exc()[-1500:]}")


def finish_run(
    tally: Tally,
    label: str,
    cwd: Path,
    expected: Expected,
    args: Sequence[str] = (),
    *,
    results: Path | None = None,
) -> None:
    """Restart once more without faults and check the answer: the end of every scenario. The
    run must resume from the checkpoint on disk, not start over."""
    tally.restart()
    saved = load_json((results or cwd) / CHECKPOINT)
    worker = start_worker(cwd, ["--max-line-bytes", str(MAX_LINE), *args])
    worker.finish(timeout=120)
    if saved is not None and not worker.named("checkpoint_loaded", offset=saved.get("offset")):
        tally.violation(label, f"did not resume from the checkpoint on disk: {worker.tail()}")
    expect_completed(tally, label, worker, expected, results or cwd)


def fresh(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    return directory


def graceful_partial_run(
    tally: Tally,
    label: str,
    cwd: Path,
    rng: random.Random,
    args: Sequence[str] = PACED,
    checkpoint: str = CHECKPOINT,
) -> bytes:
    """A paced run stopped by SIGTERM part-way: the checkpoint's bytes, checked against its log."""
    worker = start_worker(cwd, args)
    if not worker.wait_ready():
        tally.violation(label, "the worker never became ready")
    time.sleep(rng.uniform(0.2, 0.4))
    worker.signal(signal.SIGTERM)
    worker.finish(timeout=30)
    saved = worker.named("checkpoint_saved", reason="shutdown")
    if worker.code != 0 or not saved:
        tally.violation(label, f"graceful stop: exit {worker.code}, shutdown saves {saved}")
    return (cwd / checkpoint).read_bytes()
