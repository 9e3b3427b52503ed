"""Row 10: many files in one worker against the same bytes in one file.

Eight copies of a 6M-number file, read through one glob, must keep at least 0.9x the throughput
of one file holding the same bytes end to end: files are read and parsed concurrently, so the
split costs next to nothing. Both runs must reach the exact sum, or the row fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import inputs
from .processes import Finished, run, worker_args
from .report import Measurement
from .runs import Bench, best_wall, figures, interleaved, result_of, seconds

__all__ = ["many_files"]

FILES = 8
NUMBERS_PER_FILE = 6_000_000
GOAL = 0.9


def _copies(part: inputs.Input) -> Path:
    """A directory of FILES distinct files, each a copy of `part` (cached)."""
    directory = inputs.INPUTS / f"{part.path.stem}-{FILES}-files"
    if not (directory / f"{FILES - 1}.txt").exists():
        shutil.rmtree(directory, ignore_errors=True)
        staging = directory.with_name(directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for index in range(FILES):
            shutil.copyfile(part.path, staging / f"{index}.txt")
        staging.rename(directory)
    return directory


def many_files(bench: Bench) -> list[Measurement]:

    part = inputs.numbers_file(NUMBERS_PER_FILE, seed=3)
    one_file = inputs.concatenated(part, FILES)
    directory = _copies(part)
    assert part.sum is not None
    expected = part.sum * FILES

    def worker_on(source: str) -> Finished:
        workdir = bench.fresh("many-files")
        finished = run(worker_args(Path(source), workdir), workdir / "log.jsonl")
        total = result_of(workdir)["sum"]
        if finished.code != 0 or total != expected:
            raise RuntimeError(f"worker on {source}: exit {finished.code}, sum {total}")
        return finished

    runs = max(2, bench.plan.worker_runs)
    many, single = interleaved(
        runs, lambda: worker_on(str(directory / "*.txt")), lambda: worker_on(str(one_file.path))
    )
    share = best_wall(single) / best_wall(many)
    fastest = min(many, key=lambda r: r.wall)
    return [
        Measurement(
            10,
            f"throughput, {FILES} files of {NUMBERS_PER_FILE:,} numbers through one glob",
            seconds(best_wall(many)),
            f"the same bytes in one file {seconds(best_wall(single))}",
            f"{share:.2f}x of one file",
            f">= {GOAL}x",
            share >= GOAL,
            {"many_files": figures(many), "one_file": figures(single)},
        ),
        Measurement(
            10,
            "  cores busy while reading the files (CPU time / wall time)",
            f"{fastest.cpu / fastest.wall:.2f}",
            "2 cores",
            "",
            "(context)",
            None,
        ),
    ]
