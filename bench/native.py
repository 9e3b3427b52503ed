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
from .runs import Bench, best_wall, figures, interleaved, seconds, size_of, worker_run

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

    def count_lines(source: Input) -> Callable[[], Finished]:
        return lambda: run([wc, "-l", str(source.path)], bench.fresh("wc") / "stdout.txt")

    workers, polars, duckdb, wcs = interleaved(
        bench.plan.engine_runs,
        lambda: worker_run(bench, medium),
        _engine(bench, POLARS_SUM, medium, "polars"),
        _engine(bench, DUCKDB_SUM, medium, "duckdb"),
        count_lines(medium),
    )
    worker = best_wall(workers)
    what = f"{medium.records:,} numbers ({size_of(medium)}), wall"
    lines = [
        Measurement(
            7,
            what,
            seconds(worker),
            f"{name} {seconds(best_wall(runs))}",
            f"{best_wall(runs) / worker:.2f}x faster",
            "> 1x (faster)",
            best_wall(runs) > worker,
            {"worker": figures(workers), name: figures(runs)},
        )
        for name, runs in (("polars scan_csv().sum()", polars), ("duckdb read_csv sum", duckdb))
    ]
    lines.append(_against_wc(medium, workers, wcs))
    large = bench.large()
    large_workers, large_wcs = interleaved(
        bench.plan.engine_runs,
        lambda: worker_run(bench, large),
        count_lines(large),
    )
    lines.append(_against_wc(large, large_workers, large_wcs))
    return lines + _kernel_alone(medium)


WC_GOAL = 2.5  # the whole run against `wc -l` on the same file, wall time


def _against_wc(source: Input, workers: list[Finished], wcs: list[Finished]) -> Measurement:
    """The worker end to end against `wc -l`, the page cache's pace, in wall time (the goal)
    and in CPU time (context: `wc` uses one core, the worker two)."""
    worker, wc = best_wall(workers), best_wall(wcs)
    cpu, wc_cpu = min(r.cpu for r in workers), min(r.cpu for r in wcs)
    return Measurement(
        7,
        f"  against wc -l, {size_of(source)}: wall; CPU (user + system)",
        f"{seconds(worker)}; {seconds(cpu)}",
        f"wc -l {seconds(wc)}; {seconds(wc_cpu)}",
        f"{worker / wc:.1f}x; {cpu / wc_cpu:.1f}x as long",
        f"wall <= {WC_GOAL}x",
        worker / wc <= WC_GOAL,
        {"worker": figures(workers), "wc": figures(wcs)},
    )


KERNEL_GOAL = 3.0  # a vector path against the scalar path, per thread, same bytes
KERNEL_SHAPE_GOAL = 0.8  # every shape's bytes per second against plain, kernel alone


def _scan_rates(samples: dict[str, bytes], path: str, turns: int = 5) -> dict[str, float]:
    """Bytes per second of the kernel alone on `path`, one thread, best of `turns` per sample.

    Timed in the thread's CPU time: on a shared machine a scan descheduled for a moment would
    otherwise count another process's time as its own.
    """
    from service.core import _kernel

    before = _kernel.path()
    _kernel.set_path(path)
    best: dict[str, float] = {}
    try:
        for _ in range(turns):  # taking turns, so a busy moment hits every sample alike
            for name, data in samples.items():
                started = time.thread_time()
                _kernel.scan(data, 0, 4096, False, 0)
                best[name] = max(best.get(name, 0.0), len(data) / (time.thread_time() - started))
    finally:
        _kernel.set_path(before)
    return best


def _kernel_alone(source: Input) -> list[Measurement]:
    """The kernel itself in this process, one thread, on the file held in memory, every path."""
    from service.core import _kernel

    data = source.path.read_bytes()
    rates: dict[str, float] = {}
    for _ in range(2):  # the paths take turns too
        for path in _kernel.PATHS:
            rate = _scan_rates({"plain": data}, path, turns=2)["plain"]
            rates[path] = max(rates.get(path, 0.0), rate)
    scalar = rates["scalar"]
    lines = [
        Measurement(
            7,
            "  the kernel alone, one thread (CPU time), in memory: scalar",
            f"{scalar / 1e9:.2f} GB/s",
            "",
            "",
            "(reference)",
            None,
            {"bytes_per_s": scalar},
        )
    ]
    for path in ("avx2", "avx512"):
        if path not in rates:
            lines.append(
                Measurement(7, f"  the kernel alone: {path}", "not on this CPU", "", "", "", None)
            )
            continue
        ratio = rates[path] / scalar
        lines.append(
            Measurement(
                7,
                f"  the kernel alone: {path}",
                f"{rates[path] / 1e9:.2f} GB/s",
                f"scalar {scalar / 1e9:.2f} GB/s",
                f"{ratio:.2f}x",
                f">= {KERNEL_GOAL:.0f}x scalar",
                ratio >= KERNEL_GOAL,
                {"bytes_per_s": rates[path], "scalar_bytes_per_s": scalar},
            )
        )
    return lines


# --- 8. every input shape at the plain file's speed ---------------------------------------------


def shapes(bench: Bench) -> list[Measurement]:
    plain = inputs.numbers_file(SHAPE_COUNT, SHAPE_SEED)
    shaped = {
        name: inputs.shaped_file(SHAPE_COUNT, SHAPE_SEED, name)
        for name in [*inputs.SHAPES, inputs.WIDE]
    }
    runs = interleaved(
        bench.plan.shape_runs,
        lambda: worker_run(bench, plain),
        *(lambda source=source: worker_run(bench, source) for source in shaped.values()),
    )
    plain_rate = plain.size / best_wall(runs[0])
    lines = []
    for (name, source), shape_runs in zip(shaped.items(), runs[1:], strict=True):
        rate = source.size / best_wall(shape_runs)
        lines.append(
            Measurement(
                8,
                f"{name}, {SHAPE_COUNT:,} numbers ({size_of(source)}), bytes/s",
                f"{rate / 1e6:.0f} MB/s",
                f"plain {plain_rate / 1e6:.0f} MB/s ({size_of(plain)})",
                f"{rate / plain_rate:.2f}x",
                ">= 0.77x (1/1.3)",
                rate / plain_rate >= SHAPE_GOAL,
                {"plain": figures(runs[0]), name: figures(shape_runs), "bytes": source.size},
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
    best = _scan_rates(samples, _kernel.BEST)
    ratios = {name: best[name] / best["plain"] for name in shaped}
    return Measurement(
        8,
        f"  the kernel alone ({_kernel.BEST}), per byte, against plain (32 MB each, in memory)",
        ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items()),
        f"plain {best['plain'] / 1e9:.2f} GB/s",
        f"{min(ratios.values()):.2f}x at worst",
        f">= {KERNEL_SHAPE_GOAL}x",
        min(ratios.values()) >= KERNEL_SHAPE_GOAL,
        {"bytes_per_s": best},
    )


# --- 9. start-up --------------------------------------------------------------------------------


def startup(bench: Bench) -> list[Measurement]:
    """`run` on a one-line input, start to exit, against the bare interpreter (`python -I`)."""
    out = bench.fresh("nothing") / "stdout.txt"

    def one_line() -> Finished:
        directory = bench.fresh("startup")
        numbers = directory / "numbers.txt"
        numbers.write_text("1\n")
        finished = run(worker_args(numbers, directory), directory / "log.jsonl")
        if finished.code != 0:
            raise RuntimeError(f"worker exited {finished.code} on one line: {finished.stdout}")
        return finished

    def interpreter(*flags: str) -> Callable[[], Finished]:
        return lambda: run([sys.executable, *flags, "-c", "pass"], out)

    # `-I`: the bare interpreter, no site-packages start-up (the venv's .pth files run there).
    runs, bare, venv = interleaved(
        bench.plan.startup_runs, one_line, interpreter("-I"), interpreter()
    )
    mean, mean_bare, mean_venv = (statistics.fmean(r.wall for r in x) for x in (runs, bare, venv))
    return [
        Measurement(
            9,
            f"`run` on a one-line input, mean of {len(runs)}",
            seconds(mean),
            f"python -I -c pass {seconds(mean_bare)}",
            f"{mean / mean_bare:.1f}x",
            "<= 6x",
            mean / mean_bare <= 6,
            {"run_s": [r.wall for r in runs], "python_isolated_s": [r.wall for r in bare]},
        ),
        Measurement(
            9,
            "  against the venv's python -c pass (site start-up included)",
            seconds(mean),
            f"python -c pass {seconds(mean_venv)}",
            f"{mean / mean_venv:.1f}x",
            "(context)",
            None,
            {"python_s": [r.wall for r in venv]},
        ),
    ]


ROWS: dict[int, Callable[[Bench], list[Measurement]]] = {7: engines, 8: shapes, 9: startup}
