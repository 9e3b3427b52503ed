"""The core measurements (rows 1-6, 10, 11), each a function of the `Bench` returning its lines.

Rule 1: every figure is compared with a baseline or with its own variant measured in the same
        invocation, interleaved, best of a few runs: the machine is shared, so a ratio from one
        run is worth more than an absolute figure from another.
        Rows 5 and 11 toggle one setting on the same input, a cost of a few percent, smaller
        than the spread of whole runs here: they take the median of the pairs' ratios, each pair
        run back to back, so neither side is credited with the luckiest moment of the run.
Rule 2: a figure counts only if the run was right: exit code, exact sum, the log events and
        checkpoint the worker promises. A wrong run is a FAIL, however fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from . import inputs
from .inputs import Input
from .many_files import many_files
from .processes import WORKER, Finished, events_of, live_worker, run, worker_args
from .report import Measurement
from .runs import (
    MB,
    Bench,
    best_wall,
    figures,
    interleaved,
    mb,
    median_wall,
    paired_share,
    result_of,
    seconds,
    size_of,
    worker_run,
)
from .small_files import small_files

__all__ = ["ROWS"]

ONE_LINER = 'import sys; print(sum(map(int, open(sys.argv[1], "rb"))))'
MAWK_SUM = "{s+=$1} END {print s}"
# Two numbers whose sum, 2**53 + 1, is the first integer a double cannot hold.
PAST_2_53 = (2**52, 2**52 + 1)


# --- 1. throughput ------------------------------------------------------------------------------


def throughput(bench: Bench) -> list[Measurement]:
    medium = bench.medium()
    plan = bench.plan
    out = bench.fresh("baselines") / "stdout.txt"
    mawk = shutil.which("mawk")

    def one_liner() -> Finished:
        return run([sys.executable, "-c", ONE_LINER, str(medium.path)], out)

    def by_mawk() -> Finished:
        assert mawk is not None
        return run([mawk, MAWK_SUM, str(medium.path)], out)

    workers = bench.medium_runs  # shared: row 2 reads their peak RSS
    python_runs: list[Finished] = []
    mawk_runs: list[Finished] = []
    for turn in range(max(plan.worker_runs, plan.baseline_runs)):  # taking turns, as above
        if turn < plan.worker_runs:
            workers.append(worker_run(bench, medium))
        if turn < plan.baseline_runs:
            python_runs.append(one_liner())
            if mawk:
                mawk_runs.append(by_mawk())
    worker = best_wall(workers)
    what = f"throughput, {medium.records:,} numbers ({size_of(medium)}), wall"
    lines = []
    ratio = best_wall(python_runs) / worker
    lines.append(
        Measurement(
            1,
            what,
            seconds(worker),
            f"python one-liner {seconds(best_wall(python_runs))}",
            f"{ratio:.1f}x faster",
            ">= 12x",
            ratio >= 12,
            {"worker": figures(workers), "one_liner": figures(python_runs)},
        )
    )
    if mawk:
        ratio = best_wall(mawk_runs) / worker
        lines.append(
            Measurement(
                1,
                what,
                seconds(worker),
                f"mawk {seconds(best_wall(mawk_runs))}",
                f"{ratio:.1f}x faster",
                ">= 3x",
                ratio >= 3,
                {"worker": figures(workers), "mawk": figures(mawk_runs)},
            )
        )
    cpu = min(r.cpu for r in workers)
    lines.append(
        Measurement(
            1,
            "  the same runs in CPU time (user + system)",
            seconds(cpu),
            f"one-liner {seconds(min(r.cpu for r in python_runs))}"
            + (f", mawk {seconds(min(r.cpu for r in mawk_runs))}" if mawk_runs else ""),
            f"{min(r.cpu for r in python_runs) / cpu:.1f}x"
            + (f", {min(r.cpu for r in mawk_runs) / cpu:.1f}x" if mawk_runs else ""),
            "(context)",
            None,
        )
    )
    lines.append(_exactness(medium, python_runs[-1], mawk_runs[-1] if mawk_runs else None))
    if mawk:
        lines.append(_past_2_53(bench, mawk))
    return lines


def _exactness(medium: Input, python_run: Finished, mawk_run: Finished | None) -> Measurement:
    """The worker's sum (checked against the generator's in every run) against the baselines'."""
    python_sum = int(python_run.stdout.strip())
    mawk_text = mawk_run.stdout.strip() if mawk_run else "-"
    return Measurement(
        1,
        f"exact sum of the {size_of(medium)} input",
        str(medium.sum),
        f"one-liner {python_sum}; mawk printed {mawk_text}",
        "equal" if python_sum == medium.sum else "DIFFERENT",
        "worker = one-liner",
        python_sum == medium.sum,
        {"sum": medium.sum, "one_liner": python_sum, "mawk": mawk_text},
    )


def _past_2_53(bench: Bench, mawk: str) -> Measurement:
    """Two lines whose sum no double holds: the worker stays exact, awk's doubles do not."""
    directory = bench.fresh("past-2-53")
    numbers = directory / "numbers.txt"
    numbers.write_text("".join(f"{n}\n" for n in PAST_2_53))
    program = '{s+=$1} END {print s; printf "%d %.0f\\n", s, s}'
    printed = run([mawk, program, str(numbers)], directory / "mawk.txt").stdout.split()
    finished = run(worker_args(numbers, directory), directory / "log.jsonl")
    exact = sum(PAST_2_53)
    worker_sum = result_of(directory)["sum"] if finished.code == 0 else None
    return Measurement(
        1,
        "sum past 2^53 (2 lines)",
        str(worker_sum),
        f"mawk print {printed[0]}, %d {printed[1]}, %.0f {printed[2]}",
        "exact" if worker_sum == exact else "WRONG",
        f"worker = {exact}",
        worker_sum == exact,
        {"exact": exact, "worker": worker_sum, "mawk": printed},
    )


# --- 2. memory ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _busy_loops() -> Iterator[None]:
    """One `yes > /dev/null` per core, running while the block runs: the worker's threads and
    its event loop are descheduled at any instant, as on a loaded host."""
    loops = [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def memory(bench: Bench) -> list[Measurement]:
    small, medium, large = bench.small(), bench.medium(), bench.large()
    directory = bench.fresh("one-line")
    one_line = directory / "numbers.txt"
    one_line.write_text("1\n")
    idle = run(worker_args(one_line, directory), directory / "log.jsonl")
    if not bench.medium_runs:
        bench.medium_runs.append(worker_run(bench, medium))
    by_size = {
        small: worker_run(bench, small).max_rss,
        medium: max(r.max_rss for r in bench.medium_runs),
    }
    # The bound must hold on every run, not on a typical one: half the runs alone, half beside
    # a busy loop per core.
    quiet_count = bench.plan.memory_runs - bench.plan.memory_runs // 2
    quiet = [worker_run(bench, large) for _ in range(quiet_count)]
    with _busy_loops():
        busy = [worker_run(bench, large) for _ in range(bench.plan.memory_runs // 2)]
    bench.large_run = quiet[0]
    peak = max(r.max_rss for r in quiet + busy)
    by_size[large] = quiet[0].max_rss
    # Flat: what the peak grows by is a sliver of what the input grows by (holding the input,
    # or anything per line, would grow it by as much as the input or more).
    growth = (by_size[large] - by_size[small]) / (large.size - small.size)
    return [
        Measurement(
            2,
            f"peak RSS, {size_of(large)} input, the largest of {len(quiet) + len(busy)} runs",
            mb(peak),
            f"same worker on a 1-line input {mb(idle.max_rss)}",
            f"+{(peak - idle.max_rss) / MB:.1f} MB",
            "<= 50 MB",
            peak <= 50 * MB,
            {"peak_rss": peak, "one_line_rss": idle.max_rss},
        ),
        Measurement(
            2,
            f"  of them: {len(quiet)} alone; {len(busy)} beside {os.cpu_count()} busy loops",
            f"{mb(max(r.max_rss for r in quiet))}; {mb(max(r.max_rss for r in busy))}",
            f"first run {mb(quiet[0].max_rss)}",
            "",
            "(context)",
            None,
            {"quiet_rss": [r.max_rss for r in quiet], "busy_rss": [r.max_rss for r in busy]},
        ),
        Measurement(
            2,
            "peak RSS flat in input size",
            ", ".join(f"{size_of(s)}: {mb(rss)}" for s, rss in by_size.items()),
            f"{size_of(small)} input",
            f"{growth * (large.size - small.size) / MB:+.1f} MB for "
            f"+{(large.size - small.size) / MB:.0f} MB",
            "growth <= 1% of input's",
            growth <= 0.01,
            {"rss_by_bytes": {s.size: rss for s, rss in by_size.items()}},
        ),
    ]


# --- 3. resume ----------------------------------------------------------------------------------


def resume(bench: Bench) -> list[Measurement]:
    """The same last 1% of the 1 GB input: from offset 0 of a copy of it, and from a checkpoint."""
    from service import save_checkpoint

    large = bench.large()
    cut = inputs.line_start_near(large.path, large.size * 99 // 100)
    tail = inputs.tail_file(large, cut)
    results: dict[str, dict[str, Any]] = {}

    def from_zero() -> Finished:
        finished = worker_run(bench, tail)
        results["zero"] = result_of(bench.scratch / "run")  # where worker_run ran it
        return finished

    def from_checkpoint() -> Finished:
        directory = bench.fresh("run")
        save_checkpoint(cut, 0, directory / "checkpoint.json", input=large.path)
        finished = run(worker_args(large.path, directory), directory / "log.jsonl")
        loaded = [e for e in events_of(finished.stdout) if e["event"] == "checkpoint_loaded"]
        if finished.code != 0 or not loaded or loaded[0]["offset"] != cut:
            raise RuntimeError(f"resume at {cut} failed: {finished.stdout}")
        results["resumed"] = result_of(directory)
        return finished

    zero, resumed = interleaved(bench.plan.resume_runs, from_zero, from_checkpoint)
    same = (results["zero"]["sum"], results["zero"]["records"]) == (
        results["resumed"]["sum"],
        results["resumed"]["records"],
    )
    ratio = best_wall(resumed) / best_wall(zero)
    lines = [
        Measurement(
            3,
            f"last {size_of(tail)}: resume at 99% of {size_of(large)} vs from 0 of a copy",
            seconds(best_wall(resumed)),
            f"from offset 0 {seconds(best_wall(zero))}",
            f"{ratio:.2f}x",
            "<= 1.5x, same sum",
            ratio <= 1.5 and same,
            {
                "offset": cut,
                "resumed_s": [r.wall for r in resumed],
                "from_zero_s": [r.wall for r in zero],
                "same_sum_and_records": same,
            },
        )
    ]
    if bench.large_run is not None:
        whole = bench.large_run.wall
        lines.append(
            Measurement(
                3,
                "resume at 99% vs the whole input from 0",
                seconds(best_wall(resumed)),
                f"whole {size_of(large)} {seconds(whole)}",
                f"{best_wall(resumed) / whole:.3f}x",
                "(context)",
                None,
            )
        )
    return lines


# --- 4. graceful stop ---------------------------------------------------------------------------


def _sigterm_trial(
    bench: Bench, large: Input, directory: Path, window: float
) -> tuple[float, str | None]:
    """SIGTERM a worker mid-stream, up to `window` seconds after start-up; (seconds to exit,
    what was wrong or None)."""
    from service import load_checkpoint

    worker = live_worker(worker_args(large.path, directory))
    try:
        worker.wait_for(("checkpoint_not_found", "checkpoint_loaded"), timeout=60)
        time.sleep(bench.rng.uniform(0.02, window))
        if worker.process.poll() is not None:
            return 0.0, "exited before the signal"
        sent = time.perf_counter()
        worker.process.send_signal(signal.SIGTERM)
        code = worker.process.wait(timeout=30)
        latency = time.perf_counter() - sent
        worker.finish()
    finally:
        worker.kill()
    saved = [e for e in worker.named("checkpoint_saved") if e.get("reason") == "shutdown"]
    if code != 0 or not saved:
        last = [e["event"] for e in worker.events[-4:]]
        return latency, f"exit {code}, shutdown checkpoint logged: {bool(saved)}, last: {last}"
    checkpoint = load_checkpoint(directory / "checkpoint.json")
    if checkpoint is None or checkpoint.offset != saved[-1]["offset"]:
        return latency, "checkpoint file does not hold the logged offset"
    if not 0 < checkpoint.offset < large.size:
        return latency, f"not mid-stream (offset {checkpoint.offset})"
    return latency, None


def _reading_seconds(finished: Finished) -> float:
    """How long a run read its input: from the end of start-up (no checkpoint found) to its
    completion, by its log's timestamps."""
    at = {e["event"]: datetime.fromisoformat(e["timestamp"]) for e in events_of(finished.stdout)}
    return (at["completed"] - at["checkpoint_not_found"]).total_seconds()


def graceful_stop(bench: Bench) -> list[Measurement]:
    large = bench.large()
    # Signal within the first half of the fastest run's reading (start-up is waited out first),
    # so each trial stops it mid-stream.
    window = 0.5 * min(_reading_seconds(worker_run(bench, large)) for _ in range(3))
    directory = bench.scratch / "sigterm"
    latencies: list[float] = []
    problems: list[str] = []
    for _ in range(bench.plan.sigterm_trials):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        latency, problem = _sigterm_trial(bench, large, directory, window)
        latencies.append(latency)
        if problem:
            problems.append(problem)
    # The last trial's checkpoint, resumed to the end, must give the input's exact sum.
    finished = run(worker_args(large.path, directory), directory / "log.jsonl")
    exact = finished.code == 0 and result_of(directory)["sum"] == large.sum
    if len(latencies) > 1:
        p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    else:
        p99 = latencies[0]
    p50 = statistics.median(latencies)
    return [
        Measurement(
            4,
            f"SIGTERM to exit at full speed, {len(latencies)} trials",
            f"p99 {seconds(p99)}",
            f"p50 {seconds(p50)}, max {seconds(max(latencies))}",
            f"{p99 / 0.5:.2f}x of budget",
            "p99 < 0.5 s",
            p99 < 0.5,
            {"latencies_s": latencies},
        ),
        Measurement(
            4,
            "final checkpoint on each stop; resumed sum exact",
            f"{len(latencies) - len(problems)}/{len(latencies)} whole",
            "resume of the last one: " + ("exact" if exact else "WRONG"),
            "",
            "all, exact",
            not problems and exact,
            {"problems": problems, "resumed_exact": exact},
        ),
    ]


# --- 5. checkpoint cost -------------------------------------------------------------------------


def checkpoint_cost(bench: Bench) -> list[Measurement]:
    # The 1.03 GB input: the 344 MB one reads in about 0.3 s, a third of it start-up, which
    # would measure start-up more than the throughput this row is about.
    large = bench.large()
    often, rarely = interleaved(
        bench.plan.interval_runs,
        lambda: worker_run(bench, large, interval=0.05),
        lambda: worker_run(bench, large, interval=60),
    )
    saves = sum(
        1
        for e in events_of(min(often, key=lambda r: r.wall).stdout)
        if e["event"] == "checkpoint_saved" and e["reason"] == "timer"
    )
    share = paired_share(rarely, often)
    cpu_often, cpu_rarely = min(r.cpu for r in often), min(r.cpu for r in rarely)
    return [
        Measurement(
            5,
            f"throughput, 1.03 GB, checkpoint every 0.05 s ({saves} saves) vs 60 s",
            f"median {seconds(median_wall(often))}",
            f"every 60 s {seconds(median_wall(rarely))}",
            f"{share:.1%} of the throughput",
            ">= 95%",
            share >= 0.95,
            {"often": figures(often), "rarely": figures(rarely), "timer_saves": saves},
        ),
        Measurement(
            5,
            "  the same runs in CPU time (user + system)",
            seconds(cpu_often),
            f"every 60 s {seconds(cpu_rarely)}",
            f"{cpu_rarely / cpu_often:.1%}",
            "(context)",
            None,
        ),
    ]


# --- 6. healthcheck -----------------------------------------------------------------------------


def healthcheck(bench: Bench) -> list[Measurement]:
    """`healthcheck` against a live, idle worker, and the interpreter doing nothing."""
    directory = bench.fresh("health")
    numbers = directory / "numbers.txt"
    numbers.write_text("1\n")
    worker = live_worker(worker_args(numbers, directory, "--follow"))
    try:
        worker.wait_for("caught_up", timeout=60)
        out = directory / "stdout.txt"
        check = [WORKER, "healthcheck", "--checkpoint", str(directory / "checkpoint.json")]
        checks, nothing = interleaved(
            bench.plan.health_runs,
            lambda: run(check, out),
            lambda: run([sys.executable, "-c", "pass"], out),
        )
        worker.process.send_signal(signal.SIGTERM)
        worker.finish()
    finally:
        worker.kill()
    healthy = all(r.code == 0 and r.stdout.startswith("healthy") for r in checks)
    mean_check = statistics.fmean(r.wall for r in checks)
    mean_nothing = statistics.fmean(r.wall for r in nothing)
    ratio = mean_check / mean_nothing
    return [
        Measurement(
            6,
            f"`healthcheck` (healthy), mean of {len(checks)}",
            seconds(mean_check),
            f"python -c pass {seconds(mean_nothing)}",
            f"{ratio:.1f}x",
            "<= 3x, exit 0",
            ratio <= 3 and healthy,
            {"healthcheck_s": [r.wall for r in checks], "python_s": [r.wall for r in nothing]},
        )
    ]


# --- 7. metrics cost ---------------------------------------------------------------------------


def metrics_cost(bench: Bench) -> list[Measurement]:
    """Throughput with the metrics endpoint on (port 0: any free port) against off, on the
    1.03 GB input for the reason row 5 gives."""
    large = bench.large()
    served, plain = interleaved(
        bench.plan.interval_runs,
        lambda: worker_run(bench, large, "--metrics-address", "127.0.0.1:0"),
        lambda: worker_run(bench, large),
    )
    listening = all(
        any(e["event"] == "metrics_listening" for e in events_of(r.stdout)) for r in served
    )
    share = paired_share(plain, served)
    return [
        Measurement(
            11,
            "throughput, 1.03 GB, metrics_address on vs off",
            f"median {seconds(median_wall(served))}",
            f"off {seconds(median_wall(plain))}",
            f"{share:.1%} of the throughput",
            ">= 97%, served",
            share >= 0.97 and listening,
            {"on": figures(served), "off": figures(plain), "listening": listening},
        ),
        Measurement(
            11,
            "  the same runs in CPU time (user + system)",
            seconds(min(r.cpu for r in served)),
            f"off {seconds(min(r.cpu for r in plain))}",
            f"{min(r.cpu for r in plain) / min(r.cpu for r in served):.1%}",
            "(context)",
            None,
        ),
    ]


ROWS: dict[int, Callable[[Bench], list[Measurement]]] = {
    1: throughput,
    2: memory,
    3: resume,
    4: graceful_stop,
    5: checkpoint_cost,
    6: healthcheck,
    10: many_files,
    11: metrics_cost,
    13: small_files,
}


def _kafka(bench: Bench) -> list[Measurement]:
    from .kafka_rows import kafka  # imports aiokafka and the test broker only when asked

    return kafka(bench)


ROWS[12] = _kafka
