"""What every row shares: the plan of repetitions, the bench's inputs and scratch space, one
worker run checked for its exact sum, and the helpers that interleave runs and print figures.

Rule: a row module imports from here, never from another row module.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import inputs
from .inputs import Input
from .processes import Finished, run, worker_args

__all__ = [
    "MB",
    "Bench",
    "Plan",
    "best_wall",
    "figures",
    "interleaved",
    "mb",
    "median_wall",
    "paired_share",
    "result_of",
    "seconds",
    "size_of",
    "worker_run",
]

MB = 1_000_000


@dataclass(frozen=True)
class Plan:
    """How many times each thing runs; `quick` trades confidence for time."""

    worker_runs: int = 8
    baseline_runs: int = 2
    interval_runs: int = 8
    resume_runs: int = 5
    sigterm_trials: int = 50
    health_runs: int = 30
    engine_runs: int = 3
    shape_runs: int = 7
    startup_runs: int = 20
    memory_runs: int = 20  # on the largest input; the second half beside busy loops

    @classmethod
    def quick(cls) -> Plan:
        return cls(1, 1, 1, 2, 8, 8, 1, 1, 5, 2)


@dataclass
class Bench:
    """Where runs happen, what they run on, and what earlier rows found that later rows reuse."""

    scratch: Path
    plan: Plan
    rng: random.Random = field(default_factory=lambda: random.Random(2024))
    medium_runs: list[Finished] = field(default_factory=list)
    large_run: Finished | None = None

    def fresh(self, name: str) -> Path:
        """An empty directory for one run's checkpoint, result and log."""
        directory = self.scratch / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return directory

    def small(self) -> Input:
        return inputs.numbers_file(15_000_000, seed=2)

    def medium(self) -> Input:
        return inputs.numbers_file(50_000_000, seed=1)

    def large(self) -> Input:
        return inputs.concatenated(self.medium(), 3)


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def mb(value: int) -> str:
    return f"{value / MB:.1f} MB"


def size_of(source: Input) -> str:
    size = source.size
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / MB:.0f} MB"


def result_of(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((directory / "result.json").read_text())
    return loaded


def worker_run(bench: Bench, source: Input, *extra: str, interval: float = 1.0) -> Finished:
    """One run from the start of `source`; RuntimeError unless it exits 0 with the exact sum."""
    directory = bench.fresh("run")
    finished = run(
        worker_args(source.path, directory, *extra, checkpoint_interval=interval),
        directory / "log.jsonl",
    )
    if finished.code != 0:
        raise RuntimeError(f"worker exited {finished.code} on {source.path}: {finished.stdout}")
    result = result_of(directory)
    if source.sum is not None and (result["sum"], result["records"]) != (
        source.sum,
        source.records,
    ):
        raise RuntimeError(f"worker summed {source.path} to {result}, expected {source.sum}")
    return finished


def paired_share(baseline: list[Finished], variant: list[Finished]) -> float:
    """The median over interleaved pairs of baseline time / variant time (Rule 1)."""
    return statistics.median(b.wall / v.wall for b, v in zip(baseline, variant, strict=True))


def median_wall(runs: list[Finished]) -> float:
    return statistics.median(r.wall for r in runs)


def best_wall(runs: list[Finished]) -> float:
    return min(r.wall for r in runs)


def figures(runs: list[Finished]) -> dict[str, list[float]]:
    return {"wall_s": [r.wall for r in runs], "cpu_s": [r.cpu for r in runs]}


def interleaved(count: int, *makers: Callable[[], Finished]) -> list[list[Finished]]:
    """Run each maker `count` times, taking turns, so a busy moment hits all of them alike."""
    runs: list[list[Finished]] = [[] for _ in makers]
    for _ in range(count):
        for collected, make in zip(runs, makers, strict=True):
            collected.append(make())
    return runs
