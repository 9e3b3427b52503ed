"""Row 13: a glob of 20,000 small files, against the same bytes in one file.

- the whole run: wall time and peak RSS (goal: <= 150 MB), the sum exact;
- a SIGTERM mid-way, then the resume: the stop within `shutdown_timeout` with its final
  checkpoint, the resume to the exact sum, its wall time (saved files paired by an index);
- one timer save as a share of `checkpoint_interval` (goal: well under 10%), and the largest
  lateness of a 100 ms sleep on the event loop during a save, measured in process: the worker's
  own `FileSource` reads the files, `max_open_files` at a time, and saves every 1,000 files.

`python -m bench.small_files COUNT` prints the in-process save figures for COUNT files (the docs
quote them at 100,000).
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.lowlevel

from . import inputs
from .processes import live_worker, run, worker_args
from .report import Measurement
from .runs import Bench, seconds

__all__ = ["SaveCosts", "save_costs", "small_files"]

FILES = 20_000
RSS_GOAL = 150 * 1024 * 1024
SAVE_SHARE_GOAL = 0.10
LATENESS_GOAL = 0.05
SHUTDOWN_TIMEOUT = 5.0
_FILES_PER_SAVE = 1_000
_SLEEP = 0.1


def _small_files(count: int) -> tuple[Path, Path, int]:
    """A directory of `count` files of 1 to 4 numbers, one file of the same bytes, their sum."""
    directory = inputs.INPUTS / f"small-files-{count}"
    one_file = inputs.INPUTS / f"small-files-{count}.txt"
    rng = random.Random(count)
    parts = [
        b"".join(b"%d\n" % rng.randrange(10**6) for _ in range(rng.randrange(1, 5)))
        for _ in range(count)
    ]
    total = sum(int(n) for part in parts for n in part.split())
    if not one_file.exists():
        staging = directory.with_name(directory.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        for index, part in enumerate(parts):
            (staging / f"{index:06d}.txt").write_bytes(part)
        staging.rename(directory)
        one_file.write_bytes(b"".join(parts))
    return directory, one_file, total


class SaveCosts:
    """Timer saves of a source reading `count` files, and the event loop's lateness meanwhile."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.lateness: list[float] = []


async def _sleep_meanwhile(costs: SaveCosts, done: anyio.Event) -> None:
    while not done.is_set():
        started = anyio.current_time()
        await anyio.sleep(_SLEEP)
        costs.lateness.append(anyio.current_time() - started - _SLEEP)


async def _measure_saves(directory: Path, workdir: Path) -> SaveCosts:
    from service.lifecycle.partition import Partition, ReadStatus
    from service.settings import load_settings
    from service.sources.files.source import FileSource
    from service.telemetry.logs import configure_logging

    settings = load_settings(
        {
            "input": (str(directory / "*.txt"),),
            "checkpoint": workdir / "checkpoint.json",
            "result": workdir / "result.json",
        },
        None,
    )
    source = FileSource(settings, configure_logging("json", "error"))
    source.acquire()
    partitions = await source.start()
    gc.freeze()  # as the worker does after start-up
    costs = SaveCosts()

    async def read_to_end(partition: Partition) -> None:
        while (await partition.next_batch()).status is ReadStatus.READING:
            pass
        await partition.close()

    for start in range(0, len(partitions), _FILES_PER_SAVE):
        async with anyio.create_task_group() as readers:
            for partition in partitions[start : start + _FILES_PER_SAVE]:
                readers.start_soon(read_to_end, partition)
        done = anyio.Event()
        async with anyio.create_task_group() as meanwhile:
            meanwhile.start_soon(_sleep_meanwhile, costs, done)
            await anyio.lowlevel.checkpoint()  # the sleeper is asleep before the save starts
            began = time.perf_counter()
            await source.save("timer")
            costs.seconds.append(time.perf_counter() - began)
            done.set()
    await source.close()
    return costs


def save_costs(directory: Path, workdir: Path) -> SaveCosts:
    return anyio.run(_measure_saves, directory, workdir)


def small_files(bench: Bench) -> list[Measurement]:
    directory, one_file, total = _small_files(FILES)
    glob = directory / "*.txt"

    def whole(source: Path) -> tuple[float, int]:
        workdir = bench.fresh("small-files")
        finished = run(worker_args(source, workdir), workdir / "log.jsonl")
        if finished.code != 0 or _sum(workdir) != total:
            raise RuntimeError(f"worker on {source}: exit {finished.code}")
        return finished.wall, finished.max_rss

    many_wall, many_rss = whole(glob)
    one_wall, one_rss = whole(one_file)

    workdir = bench.fresh("small-files-stop")
    worker = live_worker(worker_args(glob, workdir))
    worker.wait_for("checkpoint_saved", timeout=120, reason="timer")
    sent = worker.signal(15)
    stopped = worker.finish(timeout=60) == 0 and bool(worker.named("checkpoint_saved"))
    stop_seconds = (worker.ended or sent) - sent
    resumed = run(worker_args(glob, workdir), workdir / "resume.jsonl")
    exact = resumed.code == 0 and _sum(workdir) == total

    costs = save_costs(directory, bench.fresh("small-files-saves"))
    typical = statistics.median(costs.seconds)
    late = max(costs.lateness)
    return [
        Measurement(
            13,
            f"{FILES:,} small files through one glob: the whole run, peak RSS",
            f"{seconds(many_wall)}, {many_rss / 2**20:.0f} MB",
            f"one file {seconds(one_wall)}, {one_rss / 2**20:.0f} MB",
            f"{many_wall / one_wall:.1f}x the time",
            "<= 150 MB",
            many_rss <= RSS_GOAL,
            {"many": [many_wall, many_rss], "one": [one_wall, one_rss]},
        ),
        Measurement(
            13,
            "  SIGTERM mid-way to exit, then the resume to the exact sum",
            f"stop {seconds(stop_seconds)}, resume {seconds(resumed.wall)}",
            f"one file's whole run {seconds(one_wall)}",
            "exact" if exact else "NOT EXACT",
            f"stop < {SHUTDOWN_TIMEOUT:g} s, exact",
            stopped and stop_seconds < SHUTDOWN_TIMEOUT and exact,
            {"stop_s": stop_seconds, "resume_s": resumed.wall},
        ),
        Measurement(
            13,
            f"  one timer save every {_FILES_PER_SAVE:,} files (median; the worst)",
            f"{seconds(typical)}; {seconds(max(costs.seconds))}",
            "checkpoint_interval 1 s",
            f"{typical:.1%}",
            f"< {SAVE_SHARE_GOAL:.0%}",
            typical < SAVE_SHARE_GOAL,
            {"saves_s": costs.seconds},
        ),
        Measurement(
            13,
            "  largest lateness of a 100 ms sleep on the event loop during a save",
            seconds(late),
            "",
            "",
            f"<= {seconds(LATENESS_GOAL)}",
            late <= LATENESS_GOAL,
            {"lateness_s": costs.lateness},
        ),
    ]


def _sum(workdir: Path) -> object:
    return json.loads((workdir / "result.json").read_text())["sum"]


if __name__ == "__main__":
    count = int(sys.argv[1])
    found, _one, _total = _small_files(count)
    with tempfile.TemporaryDirectory() as scratch:
        measured = save_costs(found, Path(scratch))
    print(
        f"{count:,} files: timer save median {seconds(statistics.median(measured.seconds))}, "
        f"worst {seconds(max(measured.seconds))}, "
        f"largest lateness {seconds(max(measured.lateness))}"
    )
