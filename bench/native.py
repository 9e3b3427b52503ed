"""The rows of the native kernel (issue 10): columnar engines, every input shape, start-up.

Rule 1: as in rows.py, every figure is a whole process measured against its baseline in the
        same invocation, interleaved, and counts only if the run was right (the exact sum).
Rule 2: Polars and DuckDB are the benchmark's own, installed by `make bench` into
        bench/results/baselines (a pip target, not the product's dependencies) and run by the
        venv's interpreter with that directory on PYTHONPATH.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import inputs
from .inputs import Input
from .processes import Finished, run, worker_args
from .report import Measurement
from .rows import Bench, _best, _figures, _interleaved, _seconds, _size, _worker_run

__all__ = ["ROWS"]

BASELINES = Path(__file__).resolve().parent / "results" / "baselines"
POLARS_SUM = (
    "import sys, polars as pl; print(pl.scan_csv(sys.argv[1], has_header=False, "
    "schema={'n': pl.Int64}).sum().collect().item())"
)
DUCKDB_SUM = (
    "import sys, duckdb; db = duckdb.connect(); db.execute('SET enable_progress_bar = false'); "
    "print(db.sql(\"SELECT sum(n) FROM read_csv(?, header=false, columns={'n': 'BIGINT'})\", "
    "params=[sys.argv[1]]).fetchall()[0][0])"
)
SHAPE_COUNT, SHAPE_SEED = 10_000_000, 3
SHAPE_GOAL = 1 / 1.3  # of the plain file's bytes per second


def _engine(bench: Bench, program: str, source: Input, name: str) -> Callable[[], Finished]:
    """A baseline engine's sum of `source`, as a process; RuntimeError if it is not exact."""

    def one() -> Finished:
        out = bench.fresh(name) / "stdout.txt"
        finished = run(
            [sys.executable, "-c", program, str(source.path)],
            out,
            env={"PYTHONPATH": str(BASELINES)},
        )
        printed = finished.stdout.strip()
        if finished.code != 0 or printed != str(source.sum):
            raise RuntimeError(f"{name} exited {finished.code}, printed {printed[-200:]!r}")
        return finished

    return one


# --- 7. the plain file against the columnar engines and wc -l ------------------------------------


def engines(bench: Bench) -> list[Measurement]:
    medium = bench.medium()
    wc = shutil.which("wc")
    assert wc is not None

    def count_lines() -> Finished:
        return run([wc, "-l", str(medium.path)], bench.fresh("wc") / "stdout.txt")

    workers, polars, duckdb, wcs = _interleaved(
        bench.plan.engine_runs,
        lambda: _worker_run(bench, medium),
        _engine(bench, POLARS_SUM, medium, "polars"),
        _engine(bench, DUCKDB_SUM, medium, "duckdb"),
        count_lines,
    )
    worker = _best(workers)
    what = f"{medium.records:,} numbers ({_size(medium)}), wall"
    lines = [
        Measurement(
            7,
            what,
            _seconds(worker),
            f"{name} {_seconds(_best(runs))}",
            f"{_best(runs) / worker:.2f}x faster",
            "> 1x (faster)",
            _best(runs) > worker,
            {"worker": _figures(workers), name: _figures(runs)},
        )
        for name, runs in (("polars scan_csv().sum()", polars), ("duckdb read_csv sum", duckdb))
    ]
    cpu, wc_cpu = min(r.cpu for r in workers), min(r.cpu for r in wcs)
    lines.append(
        Measurement(
            7,
            "  against wc -l: wall; CPU (user + system)",
            f"{_seconds(worker)}; {_seconds(cpu)}",
            f"wc -l {_seconds(_best(wcs))}; {_seconds(wc_cpu)}",
            f"{worker / _best(wcs):.1f}x; {cpu / wc_cpu:.1f}x as long",
            "(context)",
            None,
            {"worker": _figures(workers), "wc": _figures(wcs)},
        )
    )
    lines.append(_kernel_alone(medium))
    return lines


def _scan_rate(data: bytes, implementation: int, runs: int = 3) -> float:
    """Bytes per second of the kernel alone over `data`, best of `runs`, in this process."""
    from service.core import _kernel

    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        _kernel.scan(data, 0, 4096, False, 0, implementation=implementation)
        best = min(best, time.perf_counter() - started)
    return len(data) / best


def _kernel_alone(source: Input) -> Measurement:
    """The kernel itself in this process, one thread, on the file held in memory."""
    from service.core import _kernel

    data = source.path.read_bytes()
    rates = {
        name: _scan_rate(data, getattr(_kernel, name.upper())) / 1e9
        for name in _kernel.IMPLEMENTATIONS
    }
    return Measurement(
        7,
        "  the kernel alone, one thread, input in memory",
        ", ".join(f"{name} {rate:.2f} GB/s" for name, rate in rates.items()),
        "",
        "",
        "(context)",
        None,
        {"gb_per_s": rates},
    )


# --- 8. every input shape at the plain file's speed ---------------------------------------------


def shapes(bench: Bench) -> list[Measurement]:
    plain = inputs.numbers_file(SHAPE_COUNT, SHAPE_SEED)
    shaped = {
        name: inputs.shaped_file(SHAPE_COUNT, SHAPE_SEED, name)
        for name in [*inputs.SHAPES, inputs.WIDE]
    }
    runs = _interleaved(
        bench.plan.shape_runs,
        lambda: _worker_run(bench, plain),
        *(lambda source=source: _worker_run(bench, source) for source in shaped.values()),
    )
    plain_rate = plain.size / _best(runs[0])
    lines = []
    for (name, source), shape_runs in zip(shaped.items(), runs[1:], strict=True):
        rate = source.size / _best(shape_runs)
        lines.append(
            Measurement(
                8,
                f"{name}, {SHAPE_COUNT:,} numbers ({_size(source)}), bytes/s",
                f"{rate / 1e6:.0f} MB/s",
                f"plain {plain_rate / 1e6:.0f} MB/s ({_size(plain)})",
                f"{rate / plain_rate:.2f}x",
                ">= 0.77x (1/1.3)",
                rate / plain_rate >= SHAPE_GOAL,
                {"plain": _figures(runs[0]), name: _figures(shape_runs), "bytes": source.size},
            )
        )
    lines.append(_shapes_in_memory(plain, shaped))
    return lines


def _shapes_in_memory(plain: Input, shaped: dict[str, Input]) -> Measurement:
    """The same comparison for the kernel alone (no start-up, no reading): 32 MB of each."""
    from service.core import _kernel

    def head(source: Input) -> bytes:
        with open(source.path, "rb") as handle:
            data = handle.read(32 * 1024 * 1024)
        return data[: data.rfind(b"\n") + 1]

    samples = {"plain": head(plain)} | {name: head(source) for name, source in shaped.items()}
    best: dict[str, float] = {}
    for _ in range(5):  # taking turns, as the processes do
        for name, data in samples.items():
            best[name] = max(best.get(name, 0.0), _scan_rate(data, _kernel.BEST, runs=1))
    ratios = {name: best[name] / best["plain"] for name in shaped}
    return Measurement(
        8,
        "  the kernel alone, per byte, against plain (32 MB each, in memory)",
        ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items()),
        f"plain {best['plain'] / 1e9:.2f} GB/s",
        "",
        "(context)",
        None,
        {"bytes_per_s": best},
    )


# --- 9. start-up --------------------------------------------------------------------------------


def startup(bench: Bench) -> list[Measurement]:
    """`run` on a one-line input, start to exit, against `python -c pass`."""
    out = bench.fresh("nothing") / "stdout.txt"

    def one_line() -> Finished:
        directory = bench.fresh("startup")
        numbers = directory / "numbers.txt"
        numbers.write_text("1\n")
        finished = run(worker_args(numbers, directory), directory / "log.jsonl")
        if finished.code != 0:
            raise RuntimeError(f"worker exited {finished.code} on one line: {finished.stdout}")
        return finished

    runs, nothing = _interleaved(
        bench.plan.startup_runs, one_line, lambda: run([sys.executable, "-c", "pass"], out)
    )
    mean, mean_nothing = (statistics.fmean(r.wall for r in x) for x in (runs, nothing))
    ratio = mean / mean_nothing
    return [
        Measurement(
            9,
            f"`run` on a one-line input, mean of {len(runs)}",
            _seconds(mean),
            f"python -c pass {_seconds(mean_nothing)}",
            f"{ratio:.1f}x",
            "<= 6x",
            ratio <= 6,
            {"run_s": [r.wall for r in runs], "python_s": [r.wall for r in nothing]},
        )
    ]


ROWS: dict[int, Callable[[Bench], list[Measurement]]] = {7: engines, 8: shapes, 9: startup}
