"""The performance figures of checkpoint-worker against baselines, as real processes.

Run it:

    make bench                        # every row, as below (about 5 to 10 minutes on 2 cores)
    .venv/bin/python -m bench --rows 1,4 --quick    # a subset, fewer repetitions

It generates its inputs once (numpy, cached in bench/results/inputs/ by count and seed: 50M
numbers, ~344 MB; 15M, ~103 MB; three copies of the 50M file, ~1.03 GB), runs every row as real
processes, prints a table and writes the same to bench/results/latest.json. Exit status 1 when a
goal is missed.

Read it: each line is one measurement, `worker` against `baseline`, their `ratio`, the `goal` and
PASS/FAIL. Figures are whole-process wall times (start-up included) or peak RSS; timed rows take
the best of several interleaved runs, so a busy moment on a shared machine hits both sides
(rows 5 and 11, a cost of a few percent, the median ratio of back-to-back pairs).
Compare ratios, which hold from one machine to the next; the absolute figures do not.

1. throughput on 50M numbers (checkpoint every 1 s, JSON logs to a file) against the Python
   one-liner and mawk; the sums checked against the generator's, mawk's shown as it prints them.
2. peak RSS on the 1 GB input, and at 100 MB and 344 MB to show it does not grow with the input.
3. resume: the last 1% of the 1 GB input from a checkpoint at 99%, against the same bytes as a
   file of their own from offset 0; seeking must cost nothing.
4. SIGTERM at a random moment mid-stream to process exit, p99 over trials, with the final
   checkpoint checked each time and the last one resumed to the exact sum.
5. throughput with a checkpoint every 0.05 s against every 60 s.
6. `checkpoint-worker healthcheck` against a live worker, against `python -c pass`.
7. the 344 MB file against Polars' scan_csv().sum() and DuckDB's read_csv sum (installed into
   bench/results/baselines by `make bench`), with wc -l and the kernel alone for context.
8. each input shape (CRLF, '+', padding, 1 bad line in 1000, 21 to 38 digits) of 10M numbers
   against the plain 10M file, in bytes per second.
9. `run` on a one-line input against `python -c pass`: the start-up cost.
12. Kafka (a real broker, started for the row): draining a 10M-record topic (1M with --quick)
   with one worker against the file source, with two workers against one, and the time from a
   SIGKILL of one paced worker to the other's first record of each of its partitions (20 trials)
   against the session timeout.
13. 20,000 small files through one glob against one file of the same bytes: the run and its peak
   RSS, a SIGTERM mid-way and the resume, a timer save against `checkpoint_interval`, and the
   event loop's lateness during saves (`python -m bench.small_files 100000` for 100,000 files).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from . import native
from .report import Measurement, machine, render_table, write_json
from .rows import ROWS as CORE_ROWS
from .runs import Bench, Plan

ROWS = CORE_ROWS | native.ROWS

RESULTS = Path(__file__).resolve().parent / "results"


def _rows(text: str) -> list[int]:
    rows = sorted({int(part) for part in text.split(",") if part.strip()})
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no row {unknown[0]}; rows are 1 to {len(ROWS)}")
    return rows


def _broken(row: int, error: Exception) -> Measurement:
    message = f"{type(error).__name__}: {error}"
    return Measurement(
        row, ROWS[row].__name__, "error", message[:70], "", "", False, {"error": message}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=_rows, default=list(ROWS), help="e.g. 1,4 (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and trials")
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "latest.json", help="the JSON report"
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    began = datetime.now(UTC).isoformat(timespec="seconds")
    context = machine()
    print(
        f"checkpoint-worker bench: {context['nproc']} CPUs ({context['cpu']}), "
        f"Python {context['python']}, numpy {context['numpy']}, "
        f"load average {context['load_average'][0]}",
        flush=True,
    )
    measurements: list[Measurement] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scratch-", dir=RESULTS) as scratch:
        bench = Bench(Path(scratch), Plan.quick() if args.quick else Plan())
        for row in args.rows:
            os.sync()  # no writeback of an earlier row's files during this one's timings
            row_started = time.monotonic()
            print(f"row {row}: {ROWS[row].__name__.replace('_', ' ')} ...", end="", flush=True)
            try:
                lines = ROWS[row](bench)
            except Exception as error:  # a broken row is a FAIL in the table, not the end
                lines = [_broken(row, error)]
            measurements += lines
            print(f" {time.monotonic() - row_started:.0f} s", flush=True)

    table = render_table(measurements)
    print()
    print(table)
    passed = all(m.passed is not False for m in measurements)
    seconds = time.monotonic() - started
    print(f"\n{'all goals met' if passed else 'GOALS MISSED'} in {seconds:.0f} s; {args.output}")
    write_json(
        args.output,
        {
            "started": began,
            "seconds": round(seconds, 1),
            "rows": args.rows,
            "quick": args.quick,
            "machine": context | {"load_average_after": machine()["load_average"]},
            "all_passed": passed,
            "table": table.splitlines(),
        },
        measurements,
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
