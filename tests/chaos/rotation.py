"""Chaos part `rotation`: many followed files appended, added and rotated while workers die.

A writer thread appends lines (sometimes split across two writes) to `in/numbers.txt`, rotates it
at random (rename to `numbers.txt.N`, keep appending to the renamed file a little, then create a
new `numbers.txt`) and adds other files, all matching `in/*.txt*`. Meanwhile workers follow the
glob and are stopped at random instants, by SIGKILL or SIGTERM, and restarted. After each stop the
checkpoint must parse and never hold more records than the files did; at the end one last worker
catches up and its totals must equal the oracle's over every file on disk: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.chaos.tally import Tally
from tests.oracle import Expected, expected_of_files
from tests.processes import WorkerProcess

__all__ = ["part"]

PATTERN = "in/*.txt*"
FOLLOW = [
    "--input",
    PATTERN,
    "--follow",
    "--poll-interval",
    "0.02",
    "--checkpoint-interval",
    "0.02",
]


class _Writer(threading.Thread):
    """Appends, rotates and adds files until stopped; every file ends in '\\n' when it stops."""

    def __init__(self, directory: Path, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.rng = rng
        self.stopping = threading.Event()
        self.rotations = self.additions = 0
        self.records_written = 0  # valid lines written so far, counted after each write
        self.live = directory / "numbers.txt"
        self.handle = self.live.open("ab", buffering=0)

    def _lines(self, count: int) -> bytes:
        lines = []
        for _ in range(count):
            if self.rng.random() < 0.02:
                lines.append(b"oops\n")
            else:
                lines.append(b"%d\n" % self.rng.randrange(-(10**9), 10**9))
        self.records_written += sum(1 for line in lines if line != b"oops\n")
        return b"".join(lines)

    def _append(self) -> None:
        lines = self._lines(self.rng.randrange(1, 50))
        cut = self.rng.randrange(len(lines)) if self.rng.random() < 0.3 else len(lines)
        self.handle.write(lines[:cut])  # a split write: the worker must hold the partial line
        if cut < len(lines):
            time.sleep(0.002)
            self.handle.write(lines[cut:])

    def _rotate(self) -> None:
        self.rotations += 1
        self.live.rename(self.directory / f"numbers.txt.{self.rotations}")
        for _ in range(self.rng.randrange(3)):  # writers keep appending until they reopen
            self._append()
        self.handle.close()
        self.handle = self.live.open("ab", buffering=0)

    def _add(self) -> None:
        self.additions += 1
        path = self.directory / f"other-{self.additions}.txt"
        path.write_bytes(self._lines(self.rng.randrange(1, 500)))

    def run(self) -> None:
        while not self.stopping.is_set():
            roll = self.rng.random()
            if roll < 0.05:
                self._rotate()
            elif roll < 0.08:
                self._add()
            else:
                self._append()
            time.sleep(self.rng.uniform(0.002, 0.02))
        self.handle.close()


def _oracle(directory: Path) -> Expected:
    return expected_of_files([p.read_bytes() for p in sorted(directory.iterdir())])


def _checkpoint(work: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads((work / "checkpoint.json").read_bytes())
    except FileNotFoundError:
        return None
    return loaded if isinstance(loaded, dict) else None


def part(tally: Tally, work: Path, rng: random.Random, short: bool) -> None:
    """Random appends, additions and rotations under random SIGKILL/SIGTERM and restarts."""
    directory = work / "in"
    directory.mkdir()
    writer = _Writer(directory, rng)
    writer.start()
    try:
        for life in range(8 if short else 80):
            worker = WorkerProcess(FOLLOW, work)
            worker.wait_for("worker_started")
            time.sleep(rng.uniform(0.05, 0.6))
            kind = rng.choice([signal.SIGKILL, signal.SIGTERM])
            worker.signal(kind)
            code = worker.finish(timeout=30)
            tally.fault("SIGKILL" if kind == signal.SIGKILL else "SIGTERM")
            tally.restart()
            label = f"rotation life {life}"
            if kind == signal.SIGTERM and code != 0:
                said = "".join(worker.raw[-5:])[-1500:]
                tally.violation(label, f"SIGTERM exit {code}: {said}{worker.stderr[-500:]}")
            if "Traceback" in worker.stderr:
                tally.violation(label, worker.stderr[-2000:])
            try:
                saved = _checkpoint(work)
            except (ValueError, UnicodeDecodeError) as error:
                tally.corrupt(label, str(error))
                continue
            written = writer.records_written  # read after the stop: at least what it saw
            if saved is not None and saved["records"] > written:
                tally.wrong(label, f"checkpoint has {saved['records']} records > {written}")
    finally:
        writer.stopping.set()
        writer.join()
    tally.fault("rotation", writer.rotations)
    tally.fault("file added", writer.additions)
    expected = _oracle(directory)
    final = WorkerProcess(FOLLOW, work)
    try:
        final.wait_for("caught_up", records=expected.records, timeout=120)
    except AssertionError as missing:
        tally.violation("rotation final", str(missing)[-2000:])
    final.signal(signal.SIGTERM)
    if final.finish(timeout=30) != 0:
        tally.violation("rotation final", f"exit code; {final.stderr[-500:]}")
    saved = _checkpoint(work)
    tally.final("rotation final", saved or {}, expected)
