"""The fault-injection and bad-input campaign: real workers, real signals, real faults, counted.

Every part drives real `python -m service run` processes through one family of faults and holds
each outcome to two references that share no code with the worker: the oracle of the input rules
(tests/oracle.py) and the promises of CONTRACT.md. The campaign counts; it never assumes:

- lost / duplicated: the final records and bad records against the oracle's, per final run
  (lost = max(0, oracle - got), duplicated = max(0, got - oracle));
- corrupt checkpoints seen: a checkpoint on disk that does not parse after a fault;
- wrong answers: a sum, count or offset (final, or in a checkpoint on disk) that differs from the
  oracle's for the input it claims to have consumed;
- contract violations: a wrong exit code, a missing or extra error line, a traceback, a file that
  had to stay untouched and changed, a shutdown slower than its timeout.

Parts: crashes, signals, storage, corrupt, hostile, changes, shutdown, rotation, fleet (Kafka).
`short` is the version `make test` runs (tests/test_chaos.py); the full one is `make chaos`.
Faults that need root (tmpfs, mounts) or strace are reported as skipped when unavailable, never
as passed.

    python -m tests.chaos [--short] [--part NAME]... [--seed N] [--json PATH] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from tests.chaos_fleet import part_fleet
from tests.chaos_rotation import part_rotation
from tests.oracle import Expected, expected_of

__all__ = [
    "PARTS",
    "Tally",
    "Unavailable",
    "completion_on_a_slow_disk",
    "heartbeat_fault",
    "main",
    "run_part",
    "second_signal_slow_save",
    "shutdown_on_a_stalled_disk",
]

Event = dict[str, Any]
Oracle = Callable[[int], Expected | None]

INPUT = "numbers.txt"
CHECKPOINT = "checkpoint.json"
RESULT = "result.json"
MAX_LINE = 128  # room for a signed, padded 100-digit number; long lines stay cheap to write
RATE = 5000  # records per second of a paced run: lives of a few tenths of a second do real work
PACED = ["--max-rate", str(RATE), "--checkpoint-interval", "0.01", "--max-line-bytes", "128"]
RSS_LIMIT_MB = 150.0
SHUTDOWN_TIMEOUT = 5.0  # the contract's default, itself far inside Docker's 10 s grace


class Unavailable(Exception):
    """A fault this machine cannot inject (no strace, no mounts): skipped, never passed."""


# --- the tally ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """Everything a campaign saw; `clean` when nothing was lost, doubled, corrupt or wrong."""

    faults: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt_checkpoints: int = 0
    wrong_answers: int = 0
    violations: int = 0
    final_checks: int = 0
    observed: Counter[str] = field(default_factory=Counter)
    peaks: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fault(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.faults[kind] += count

    def restart(self) -> None:
        with self._lock:
            self.restarts += 1

    def observe(self, what: str, count: int = 1) -> None:
        with self._lock:
            self.observed[what] += count

    def peak(self, what: str, value: float) -> None:
        with self._lock:
            self.peaks[what] = max(self.peaks.get(what, value), value)

    def skip(self, why: str) -> None:
        with self._lock:
            if why not in self.skipped:
                self.skipped.append(why)

    def violation(self, label: str, message: str) -> None:
        with self._lock:
            self.violations += 1
            self.problems.append(f"[{label}] {message[:2000]}")

    def wrong(self, label: str, message: str) -> None:
        with self._lock:
            self.wrong_answers += 1
            self.problems.append(f"[{label}] wrong answer: {message[:2000]}")

    def corrupt(self, label: str, message: str) -> None:
        with self._lock:
            self.corrupt_checkpoints += 1
            self.problems.append(f"[{label}] corrupt checkpoint: {message[:2000]}")

    def final(self, label: str, got: dict[str, Any], expected: Expected) -> None:
        """Compare a run's final figures with the oracle's."""
        counted = (got.get("records"), got.get("bad_records"))
        wanted = (expected.records, expected.bad_records)
        with self._lock:
            self.final_checks += 1
            for have, want in zip(counted, wanted, strict=True):
                have_count = have if isinstance(have, int) else 0
                self.lost += max(0, want - have_count)
                self.duplicated += max(0, have_count - want)
        mine = (got.get("sum"), *counted, got.get("offset"))
        theirs = (expected.sum, *wanted, expected.offset)
        if mine != theirs:
            self.wrong(label, f"(sum, records, bad_records, offset) {mine} != oracle {theirs}")

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.corrupt_checkpoints
            or self.wrong_answers
            or self.violations
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "restarts": self.restarts,
            "records_lost": self.lost,
            "records_duplicated": self.duplicated,
            "corrupt_checkpoints_seen": self.corrupt_checkpoints,
            "wrong_answers": self.wrong_answers,
            "contract_violations": self.violations,
            "final_checks": self.final_checks,
            "observed": dict(sorted(self.observed.items())),
            "peaks": {k: round(v, 3) for k, v in sorted(self.peaks.items())},
            "problems": self.problems,
            "skipped": self.skipped,
        }


# --- real worker processes ---------------------------------------------------------------------


def _worker_env() -> dict[str, str]:
    """JSON logs and nothing from the caller's WORKER_*. Not PYTHONUNBUFFERED: each log line is
    then one write() (structlog flushes per line), which the write fault injection relies on."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env = {k: v for k, v in env.items() if not k.startswith("WORKER_")}
    env.update(WORKER_LOG_FORMAT="json")
    return env


class Worker:
    """`python -m service run ARGS`, maybe under strace; its JSON log lines collected as they come.

    stderr goes to a file (never a full pipe). Its peak RSS is polled from /proc (VmHWM): the
    wait4 figure is useless here, as it includes the RSS of the test process that spawned it.
    """

    def __init__(self, cwd: Path, args: Sequence[str] = (), *, prefix: Sequence[str] = ()) -> None:
        self.traced = bool(prefix)
        self.started = time.monotonic()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish)
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "service", "run", *args],
            cwd=cwd,
            env=_worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.events: list[Event] = []
        self.noise: list[str] = []  # stdout lines that are not JSON objects
        self.code: int | None = None
        self.ended: float | None = None
        self.peak_rss_mb = 0.0
        self.stderr = ""
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._changed:
                if isinstance(event, dict):
                    self.events.append(event)
                elif line.strip():
                    self.noise.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(
        self, names: str | tuple[str, ...], timeout: float = 30.0, **fields: Any
    ) -> Event | None:
        """The first event with one of `names` and these fields; None on timeout or exit."""
        wanted = (names,) if isinstance(names, str) else names
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if event.get("event") in wanted and all(
                        event.get(k) == v for k, v in fields.items()
                    ):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._changed.wait(min(left, 0.05))

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once the worker loaded (or found no) checkpoint: it is about to read."""
        found = self.wait_for(("checkpoint_loaded", "checkpoint_not_found"), timeout)
        return found is not None

    def wait_catching(self, signum: int, timeout: float = 30.0) -> bool:
        """True once the worker has a handler for `signum` (SigCgt in /proc): before that, any
        process dies of the signal's default action, and no code of the worker has run."""
        pid = self.pid()
        deadline = time.monotonic() + timeout
        while pid is not None and time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return False
            caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
            if int(caught.split()[1], 16) & (1 << (signum - 1)):
                return True
            time.sleep(0.002)
        return False

    def named(self, name: str, **fields: Any) -> list[Event]:
        with self._changed:
            return [
                e
                for e in self.events
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]

    @property
    def errors(self) -> list[Event]:
        with self._changed:
            return [e for e in self.events if e.get("level") == "error"]

    def pid(self) -> int | None:
        """The worker's own pid (under strace, the one it logs)."""
        if not self.traced:
            return self.process.pid
        started = self.wait_for("worker_started", timeout=30)
        return int(started["pid"]) if started else None

    def send(self, signum: int) -> float:
        """Signal the worker; the instant it was sent."""
        pid = self.pid()
        sent = time.monotonic()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return sent

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the exit (SIGKILL after `timeout`); the exit code, negative for a signal."""
        if self.code is not None:
            return self.code
        deadline = time.monotonic() + timeout
        while True:
            self._sample_memory()
            pid, status = os.waitpid(self.process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.kill_now()
                pid, status = os.waitpid(self.process.pid, 0)
                self.noise.append(f"(still running after {timeout} s: killed)")
                break
            time.sleep(0.005)
        self.ended = time.monotonic()
        self.code = os.waitstatus_to_exitcode(status)
        self.process.returncode = self.code
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._stderr.seek(0)
        self.stderr = self._stderr.read().decode(errors="replace")
        self._stderr.close()
        return self.code

    def _sample_memory(self) -> None:
        if self.traced:
            return
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)

    def kill_now(self) -> None:
        """SIGKILL the worker (and its strace), without reaping."""
        for pid in {self.process.pid, self.pid() if self.traced else None}:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def tail(self) -> str:
        """The last events and stderr, for a problem report."""
        events = [e.get("event") for e in self.events[-6:]]
        return f"events ...{events}, stderr {self.stderr[-600:]!r}"

    @property
    def completed(self) -> bool:
        return self.code == 0 and bool(self.named("completed"))


def _strace(log: Path | str, syscalls: str, inject: str | None = None) -> list[str]:
    """An strace prefix that traces only `syscalls` (seccomp keeps the rest at full speed)."""
    if shutil.which("strace") is None:
        raise Unavailable("strace is not installed: syscall faults not injected")
    command = ["strace", "-f", "-qq", "-o", str(log), "--seccomp-bpf", "-e", f"trace={syscalls}"]
    if inject:
        command += ["-e", f"inject={inject}"]
    return command


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A small tmpfs at `path` (root only), unmounted afterwards whatever happened."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise Unavailable(f"cannot mount a tmpfs ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _remount(path: Path, mode: str) -> None:
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"remount {mode} {path}: {done.stderr.strip()}")


def _parallel(tally: Tally, jobs: Sequence[Callable[[], None]], workers: int = 2) -> None:
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


# --- inputs ------------------------------------------------------------------------------------

BAD_LINES: tuple[bytes, ...] = (
    b"1_000",
    b"1.5",
    b"1e3",
    b"0x1F",
    "\u0661\u0662".encode(),  # Arabic-Indic digits
    "\uff11\uff12".encode(),  # fullwidth digits
    b"abc",
    b"\x00",
    b"1\x002",
    b"\xff\xfe",
    b"\xc3\x28",
    b"+-1",
    b"--1",
    b"+",
    b"-",
    b"- 1",
    b"1 2",
    b"\x0b1",
    "\u00a01".encode(),  # a no-break space is not a space or a tab
    b"1\r\r",
    b"\r1",
    b"1,000",
    b"\t+\t",
    b"NaN",
    b"\x1b[31m1",
)
BLANK_LINES: tuple[bytes, ...] = (b"", b" ", b"\t", b"\r", b" \t \r")


def _pad(rng: random.Random) -> bytes:
    return bytes(rng.choice(b" \t") for _ in range(rng.randint(0, 3)))


def noisy_lines(rng: random.Random, count: int, max_line_bytes: int = MAX_LINE) -> Iterator[bytes]:
    """Lines (without '\\n') exercising every input rule; mostly plain numbers."""
    for _ in range(count):
        roll = rng.random()
        if roll < 0.70:
            yield str(rng.randrange(-(10**6), 10**6)).encode()
        elif roll < 0.78:
            sign = rng.choice((b"", b"+", b"-"))
            cr = b"\r" if rng.random() < 0.5 else b""
            yield _pad(rng) + sign + str(rng.randrange(10**9)).encode() + _pad(rng) + cr
        elif roll < 0.83:
            yield str(rng.randrange(-(10**6), 10**6)).encode() + b"\r"
        elif roll < 0.87:
            yield rng.choice(BLANK_LINES)
        elif roll < 0.93:
            yield rng.choice(BAD_LINES)
        elif roll < 0.96:
            yield b"7" * rng.randint(max_line_bytes + 1, max_line_bytes * 40)
        elif roll < 0.98:
            digits = str(rng.randint(10**99, 10**100 - 1)).encode()
            yield rng.choice((b"", b"-", b"+")) + digits
        else:  # the limit exactly, and one over it because the '\r' counts
            at_limit = b"9" * max_line_bytes
            yield at_limit if rng.random() < 0.5 else at_limit + b"\r"


def noisy_input(rng: random.Random, count: int, *, final_newline: bool | None = None) -> bytes:
    body = b"\n".join(noisy_lines(rng, count))
    if final_newline is None:
        final_newline = rng.random() < 0.5
    return body + (b"\n" if final_newline else b"")


def prefix_oracle(
    data: bytes, *, following: bool = False, max_line_bytes: int = MAX_LINE
) -> Oracle:
    """What a checkpoint at `offset` must hold for `data`; None if no line boundary is there."""

    def at(offset: int) -> Expected | None:
        if offset < 0 or offset > len(data):
            return None
        at_line_start = offset == 0 or data[offset - 1 : offset] == b"\n"
        if not at_line_start and (following or offset != len(data)):
            return None
        return expected_of(data[:offset], max_line_bytes=max_line_bytes)

    return at


@dataclass(frozen=True)
class RepeatedInput:
    """A block of whole lines written `copies` times: an input too big to run the oracle on."""

    block: bytes
    copies: int

    def write(self, path: Path) -> None:
        with path.open("wb") as handle:
            for _ in range(self.copies):
                handle.write(self.block)

    def _scaled(self, whole: int, rest: Expected) -> Expected:
        one = expected_of(self.block)
        return Expected(
            one.lines * whole + rest.lines,
            one.records * whole + rest.records,
            one.bad_records * whole + rest.bad_records,
            one.sum * whole + rest.sum,
            one.offset * whole + rest.offset,
            (),
        )

    def at(self, offset: int) -> Expected | None:
        whole, part = divmod(offset, len(self.block))
        if whole > self.copies or (whole == self.copies and part):
            return None
        if part and self.block[part - 1 : part] != b"\n":
            return None
        return self._scaled(whole, expected_of(self.block[:part]))

    @property
    def expected(self) -> Expected:
        return self._scaled(self.copies, expected_of(b""))


# --- checks ------------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def check_on_disk(tally: Tally, label: str, path: Path, oracle: Oracle) -> dict[str, Any] | None:
    """A checkpoint left by a fault: absent, or whole and true to the prefix it claims."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw)
        figures = [document[k] for k in ("offset", "lines", "records", "bad_records", "sum")]
        if not all(type(v) is int for v in figures):
            raise TypeError("not integers")
    except (ValueError, KeyError, TypeError) as error:
        tally.corrupt(label, f"{path.name} does not parse ({error}): {raw[:120]!r}")
        return None
    assert isinstance(document, dict)
    offset, lines, records, bad, total = figures
    expected = oracle(offset)
    if expected is None:
        tally.wrong(label, f"{path.name} offset {offset} is not the start of a line of its input")
    elif (lines, records, bad, total) != (
        expected.lines,
        expected.records,
        expected.bad_records,
        expected.sum,
    ):
        tally.wrong(
            label,
            f"{path.name} at offset {offset} holds (lines, records, bad, sum) "
            f"{(lines, records, bad, total)}; the oracle says "
            f"{(expected.lines, expected.records, expected.bad_records, expected.sum)}",
        )
    return document


def check_result(tally: Tally, label: str, path: Path, expected: Expected) -> None:
    result = _load(path)
    if result is None:
        tally.wrong(label, f"no readable {path.name} after the final run")
        tally.final(label, {}, expected)
        return
    tally.final(label, result, expected)


def _same_figures(document: dict[str, Any], event: Event) -> bool:
    return all(document.get(k) == event.get(k) for k in ("offset", "records", "bad_records", "sum"))


def expect_no_traceback(tally: Tally, label: str, worker: Worker) -> None:
    if "Traceback" in worker.stderr or worker.noise:
        text = (worker.stderr + "\n".join(worker.noise)).strip()
        tally.violation(label, f"output that is not one JSON line per event:\n{text[-2000:]}")


def expect_failure(
    tally: Tally,
    label: str,
    worker: Worker,
    *,
    mentions: Sequence[str | tuple[str, ...]] = (),
    code: int = 1,
) -> None:
    """Exit `code` with exactly one `fatal_error` line naming what failed; no traceback."""
    if worker.code != code:
        tally.violation(label, f"exit code {worker.code}, expected {code}")
    fatal = worker.named("fatal_error")
    other = [e for e in worker.errors if e.get("event") not in ("fatal_error", "input_changed")]
    if len(fatal) != 1 or other:
        tally.violation(label, f"{len(fatal)} fatal_error lines and other errors {other}")
    elif fatal[0].get("level") != "error":
        tally.violation(label, f"fatal_error at level {fatal[0].get('level')}")
    else:
        message = str(fatal[0].get("message", ""))
        for mention in mentions:
            options = (mention,) if isinstance(mention, str) else mention
            if not any(option in message for option in options):
                tally.violation(label, f"error line {message!r} does not name {options}")
    expect_no_traceback(tally, label, worker)


def expect_completed(
    tally: Tally, label: str, worker: Worker, expected: Expected, cwd: Path
) -> None:
    """Exit 0 after `completed`, a result equal to the oracle's, a checkpoint saying so."""
    if not worker.completed:
        tally.violation(label, f"exit {worker.code} without completing: {worker.tail()}")
    expect_no_traceback(tally, label, worker)
    check_result(tally, label, cwd / RESULT, expected)
    checkpoint = _load(cwd / CHECKPOINT) or {}
    if checkpoint.get("completed") is not True or checkpoint.get("offset") != expected.offset:
        tally.violation(label, f"the last checkpoint is not the completion one: {checkpoint}")


def _bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def expect_shutdown_save(
    tally: Tally, label: str, worker: Worker, path: Path, before: bytes | None
) -> None:
    """After a graceful stop, the checkpoint on disk is the `reason: shutdown` save; or, when the
    signal came before start-up finished (no timer save: nothing read), it is untouched."""
    saved = worker.named("checkpoint_saved", reason="shutdown")
    disk = _load(path)
    if saved:
        if disk is None or not _same_figures(disk, saved[-1]):
            tally.wrong(label, f"checkpoint on disk {disk} is not the shutdown save {saved[-1]}")
    elif worker.named("checkpoint_saved"):
        tally.violation(label, "no checkpoint_saved reason=shutdown after reading had begun")
    elif _bytes_or_none(path) != before:
        tally.violation(label, "no shutdown save, yet the checkpoint changed")
    else:
        tally.observe("graceful stops before start-up finished: nothing read, checkpoint untouched")


def temp_files(directory: Path, target: str = CHECKPOINT) -> list[Path]:
    return sorted(directory.glob(f".{target}.*.tmp"))


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
    saved = _load((results or cwd) / CHECKPOINT)
    worker = Worker(cwd, ["--max-line-bytes", str(MAX_LINE), *args])
    worker.finish(timeout=120)
    if saved is not None and not worker.named("checkpoint_loaded", offset=saved.get("offset")):
        tally.violation(label, f"did not resume from the checkpoint on disk: {worker.tail()}")
    expect_completed(tally, label, worker, expected, results or cwd)


def _fresh(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    return directory


def _graceful_partial_run(
    tally: Tally,
    label: str,
    cwd: Path,
    rng: random.Random,
    args: Sequence[str] = PACED,
    checkpoint: str = CHECKPOINT,
) -> bytes:
    """A paced run stopped by SIGTERM part-way: the checkpoint's bytes, checked against its log."""
    worker = Worker(cwd, args)
    if not worker.wait_ready():
        tally.violation(label, "the worker never became ready")
    time.sleep(rng.uniform(0.2, 0.4))
    worker.send(signal.SIGTERM)
    worker.finish(timeout=30)
    saved = worker.named("checkpoint_saved", reason="shutdown")
    if worker.code != 0 or not saved:
        tally.violation(label, f"graceful stop: exit {worker.code}, shutdown saves {saved}")
    return (cwd / checkpoint).read_bytes()


# --- part: crashes -----------------------------------------------------------------------------


def _crash_life(
    tally: Tally, label: str, cwd: Path, args: Sequence[str], rng: random.Random, *, slow: bool
) -> Worker:
    """One life of a worker ended by SIGKILL at a random instant (or by completing first)."""
    prefix = _strace("/dev/null", "fsync", "fsync:delay_enter=20000") if slow else ()
    worker = Worker(cwd, args, prefix=prefix)
    if not slow and rng.random() < 0.1:
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere in start-up
    else:
        if not worker.wait_ready():
            tally.violation(label, f"never ready: {worker.errors or worker.noise}")
        time.sleep(rng.uniform(0.0, 0.35))
    worker.send(signal.SIGKILL)
    worker.finish(timeout=30)
    return worker


def _crash_chain(tally: Tally, work: Path, kills: int, rng: random.Random, *, follow: bool) -> None:
    """Kill, restart, repeat; then finish the input and compare with the oracle."""
    done = cycle = 0
    while done < kills:
        cycle += 1
        cwd = _fresh(work, f"cycle{cycle}")
        label = f"crashes/{'follow' if follow else 'paced'}/cycle{cycle}"
        planned = min(kills - done, 15)
        appender: _Appender | None = None
        if follow:
            appender = _Appender(cwd / INPUT, rng.randrange(2**32))
            args = [*PACED, "--follow", "--poll-interval", "0.02"]
        else:
            data = noisy_input(rng, int(RATE * 0.2 * planned))
            (cwd / INPUT).write_bytes(data)
            args = list(PACED)
        try:
            for _ in range(planned):
                slow = rng.random() < 0.4 and shutil.which("strace") is not None
                before = _load(cwd / CHECKPOINT)
                worker = _crash_life(tally, label, cwd, args, rng, slow=slow)
                if worker.completed:
                    break  # the kill came after the end: nothing left to crash
                if worker.code not in (-signal.SIGKILL, 128 + signal.SIGKILL):
                    tally.violation(label, f"exit {worker.code} instead of death by SIGKILL")
                    expect_no_traceback(tally, label, worker)
                done += 1
                tally.fault(f"SIGKILL at a random instant ({'follow' if follow else 'paced'})")
                if slow:
                    tally.observe("SIGKILLs with fsync slowed 20 ms (strace)")
                if temp_files(cwd):
                    tally.observe("SIGKILLs that left a checkpoint half-written (temp file)")
                snapshot = (cwd / INPUT).read_bytes()
                after = check_on_disk(
                    tally, label, cwd / CHECKPOINT, prefix_oracle(snapshot, following=follow)
                )
                if before is not None and (after is None or after["offset"] < before["offset"]):
                    tally.violation(label, f"checkpoint lost or gone back: {before} -> {after}")
                tally.restart()
        finally:
            if appender is not None:
                appender.stop()
        data = (cwd / INPUT).read_bytes()
        finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))
        if temp_files(cwd):
            tally.violation(label, f"temp files left after a clean run: {temp_files(cwd)}")


class _Appender:
    """Appends noisy lines to a followed input in random cuts (numbers split across writes)."""

    def __init__(self, path: Path, rng_seed: int) -> None:
        self.path = path
        self._rng = random.Random(rng_seed)
        self._stop = threading.Event()
        path.write_bytes(noisy_input(self._rng, 200))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        with self.path.open("ab") as handle:
            while not self._stop.is_set():
                if len(pending) < 4096:
                    pending += b"\n" + b"\n".join(noisy_lines(self._rng, 200))
                cut = self._rng.randint(1, 400)
                handle.write(pending[:cut])
                handle.flush()
                pending = pending[cut:]
                self._stop.wait(self._rng.uniform(0.002, 0.02))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def part_crashes(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """SIGKILL at random instants of paced and followed runs, each followed by a restart."""
    total = 30 if short else 500
    followed = total // 2
    seeds = (rng.randrange(2**32), rng.randrange(2**32))
    _parallel(
        tally,
        [
            lambda: _crash_chain(
                tally, root / "paced", total - followed, random.Random(seeds[0]), follow=False
            ),
            lambda: _crash_chain(
                tally, root / "follow", followed, random.Random(seeds[1]), follow=True
            ),
        ],
    )


# --- part: signals -----------------------------------------------------------------------------


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
        before = _bytes_or_none(cwd / CHECKPOINT)
        worker = Worker(cwd, PACED)
        during_start = rng.random() < 0.2
        if during_start:  # imports, settings, lock, checkpoint: the receiver is not there yet
            worker.wait_catching(signal.SIGTERM)  # SIGINT is caught from the interpreter's start
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            worker.wait_ready()
            time.sleep(rng.uniform(0.0, 0.4))
        sent = worker.send(signum)
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
    before = _graceful_partial_run(tally, label, cwd, rng)
    delay = 1.5
    prefix = _strace("/dev/null", "fsync", f"fsync:delay_enter={int(delay * 1e6)}")
    interval = "1000" if during == "final save" else "0.01"
    worker = Worker(cwd, [*PACED, "--checkpoint-interval", interval], prefix=prefix)
    worker.wait_ready()
    time.sleep(rng.uniform(0.1, 0.4))
    worker.send(first)
    if worker.wait_for("shutdown_requested", timeout=10) is None:
        tally.violation(label, "no shutdown_requested after the first signal")
    time.sleep(0.2)  # inside the save's first, slowed, fsync
    sent = worker.send(second)
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
        worker = Worker(cwd, PACED)
        worker.wait_ready()
        time.sleep(rng.uniform(0.0, 0.3))
        worker.send(first)
        time.sleep(rng.uniform(0.0, 0.03))
        worker.send(second)
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


def part_signals(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
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
            _fresh(root, f"storm{i}"),
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
            _fresh(root, f"second{i}"),
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
            _fresh(root, f"race{i}"),
            3 if short else 30,
            random.Random(rng.randrange(2**32)),
        )
        for i in range(1 if short else 2)
    ]
    _parallel(tally, jobs)


# --- part: storage -----------------------------------------------------------------------------


def _injected_fault(
    tally: Tally, cwd: Path, syscall: str, error: str, when: int, rng: random.Random
) -> None:
    """One syscall of the checkpoint writes fails (strace): exit 1, previous checkpoint whole."""
    label = f"storage/{syscall} {error} at call {when}"
    data = noisy_input(rng, RATE * 2)
    (cwd / INPUT).write_bytes(data)
    log = cwd.parent / f"{cwd.name}.strace"
    prefix = _strace(log, syscall, f"{syscall}:error={error}:when={when}")
    # Log lines are write()s too: at level error the only one is the error line, the first
    # write of the main thread, so an injection counted per thread from the 2nd never hits it.
    quiet = ["--log-level", "error"] if syscall == "write" else []
    worker = Worker(cwd, [*PACED, *quiet], prefix=prefix)
    worker.finish(timeout=60)
    injected = "INJECTED" in log.read_text(errors="replace")
    log.unlink()
    if not injected:
        tally.observe("syscall faults planned but never reached (run ended first)")
        if worker.code != 0:
            tally.violation(label, f"exit {worker.code} with no fault injected")
    else:
        tally.fault(f"{error} injected into {syscall}")
        strerror = os.strerror(getattr(errno, error))
        expect_failure(tally, label, worker, mentions=[(CHECKPOINT, RESULT), strerror])
        if temp_files(cwd) or temp_files(cwd, RESULT):
            tally.violation(label, "the failed write left its temp file behind")
        disk = check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
        saved = worker.named("checkpoint_saved")
        if saved and (disk is None or disk["offset"] < saved[-1]["offset"]):
            tally.wrong(label, f"checkpoint on disk {disk} is older than the last saved one")
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _fill(directory: Path) -> Path:
    """Fill a file system until it refuses another byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for block in (4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: full to this granularity
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return filler


def _disk_full(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The checkpoint's file system fills up mid-run, then is full at start: exit 1 each time."""
    label = "storage/disk full"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    oracle = prefix_oracle(data)
    with _tmpfs(cwd / "ckpt") as ckpt:
        files = ["--checkpoint", f"ckpt/{CHECKPOINT}", "--result", f"ckpt/{RESULT}"]
        worker = Worker(cwd, [*PACED, *files])
        worker.wait_ready()
        time.sleep(rng.uniform(0.2, 0.5))
        filler = _fill(ckpt)
        tally.fault("disk full mid-run (tmpfs)")
        worker.finish(timeout=30)
        expect_failure(tally, label, worker, mentions=[CHECKPOINT, "No space left on device"])
        disk = check_on_disk(tally, label, ckpt / CHECKPOINT, oracle)
        saved = worker.named("checkpoint_saved")
        if saved and (disk is None or not _same_figures(disk, saved[-1])):
            tally.wrong(label, f"checkpoint on disk {disk} is not the last saved {saved[-1]}")
        if temp_files(ckpt):
            tally.violation(label, "the failed write left its temp file behind")
        before = (ckpt / CHECKPOINT).read_bytes() if disk is not None else None
        tally.restart()
        again = Worker(cwd, [*PACED, *files])
        again.finish(timeout=30)
        tally.fault("disk full at start (tmpfs)")
        expect_failure(tally, label + " at start", again, mentions=["No space left on device"])
        after = (ckpt / CHECKPOINT).read_bytes() if disk is not None else None
        if before != after:
            tally.violation(label, "the checkpoint changed while the disk was full")
        filler.unlink()
        expected = expected_of(data, max_line_bytes=MAX_LINE)
        finish_run(tally, label, cwd, expected, files, results=ckpt)


def _read_only(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The checkpoint's directory is read-only at start: exit 1, checkpoint byte-identical."""
    label = "storage/read-only directory"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    with _tmpfs(cwd / "ckpt", "1m") as ckpt:
        files = ["--checkpoint", f"ckpt/{CHECKPOINT}", "--result", f"ckpt/{RESULT}"]
        before = _graceful_partial_run(tally, label, cwd, rng, [*PACED, *files], files[1])
        _remount(ckpt, "ro")  # a worker holds the lock open for writing: only now can it be ro
        tally.fault("read-only checkpoint directory (remount ro)")
        worker = Worker(cwd, [*PACED, *files])
        worker.finish(timeout=30)
        expect_failure(tally, label, worker, mentions=["Read-only file system"])
        if (ckpt / CHECKPOINT).read_bytes() != before:
            tally.violation(label, "the checkpoint changed on a read-only file system")
        _remount(ckpt, "rw")
        expected = expected_of(data, max_line_bytes=MAX_LINE)
        finish_run(tally, label, cwd, expected, files, results=ckpt)


def _checkpoint_becomes_directory(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The checkpoint is replaced by a directory mid-run, then found as one at start."""
    label = "storage/checkpoint replaced by a directory"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    path, aside = cwd / CHECKPOINT, cwd / "aside.json"
    worker = Worker(cwd, PACED)
    worker.wait_ready()
    time.sleep(rng.uniform(0.2, 0.5))
    while True:  # the worker may rename a new checkpoint in between: take that one aside too
        if path.is_file():
            path.replace(aside)
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    tally.fault("checkpoint replaced by a directory mid-run")
    worker.finish(timeout=30)
    expect_failure(tally, label, worker, mentions=[CHECKPOINT])
    if not path.is_dir():
        tally.violation(label, "the directory in the checkpoint's place was removed")
    tally.restart()
    again = Worker(cwd, PACED)
    again.finish(timeout=30)
    tally.fault("checkpoint is a directory at start")
    expect_failure(tally, label + " at start", again, mentions=[CHECKPOINT])
    if not path.is_dir() or any(path.iterdir()):
        tally.violation(label, "the directory in the checkpoint's place was changed")
    path.rmdir()
    aside.replace(path)
    check_on_disk(tally, label, path, prefix_oracle(data))
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def heartbeat_fault(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The heartbeat's touch of the lock file fails (EIO): one error line, no traceback."""
    label = "storage/heartbeat EIO"
    data = noisy_input(rng, RATE * 3)
    (cwd / INPUT).write_bytes(data)
    prefix = _strace("/dev/null", "utimensat", "utimensat:error=EIO")
    worker = Worker(cwd, [*PACED, "--checkpoint-interval", "5"], prefix=prefix)
    worker.finish(timeout=30)
    tally.fault("EIO injected into the heartbeat (utimensat)")
    expect_failure(tally, label, worker, mentions=[".lock", "Input/output error"])
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def completion_on_a_slow_disk(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Every fsync takes 40 ms: a timer save queued behind the completion save must not
    overwrite it, so the last checkpoint says completed."""
    label = "storage/completion on a slow disk"
    data = noisy_input(rng, RATE // 2)
    (cwd / INPUT).write_bytes(data)
    worker = Worker(cwd, PACED, prefix=_strace("/dev/null", "fsync", "fsync:delay_enter=40000"))
    worker.finish(timeout=60)
    tally.fault("fsync slowed 40 ms to the end of the input")
    expect_completed(tally, label, worker, expected_of(data, max_line_bytes=MAX_LINE), cwd)
    reasons = [e.get("reason") for e in worker.named("checkpoint_saved")]
    if "completed" in reasons and reasons[-1] != "completed":
        tally.violation(label, f"saves after the completion save: {reasons[-3:]}")


_SYSCALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD_PATH = re.compile(r"^\d+<([^>]*)>")
_RENAME = re.compile(r'^"([^"]*)", "([^"]*)"')


def _strace_calls(text: str) -> Iterator[tuple[int, str, str, int]]:
    """(pid, syscall, arguments, result) from `strace -f -y`, interrupted calls rejoined."""
    pending: dict[int, str] = {}
    for line in text.splitlines():
        pid_text, _, rest = line.partition(" ")
        rest = rest.strip()
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>").rstrip()
            continue
        resumed = re.match(r"^<\.\.\. \w+ resumed>(.*)$", rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        match = _SYSCALL.match(f"{pid} {rest}")
        if match:
            yield pid, match.group(2), match.group(3), int(match.group(4))


def _durability_trace(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Every checkpoint and result write, seen by strace: data fsynced before its rename, and the
    directory fsynced after it. A SIGKILL cannot show a missing fsync; this trace can."""
    label = "storage/durability protocol"
    data = noisy_input(rng, RATE)
    (cwd / INPUT).write_bytes(data)
    log = cwd.parent / "durability.strace"
    prefix = _strace(log, "openat,write,fsync,fdatasync,rename,renameat,renameat2,close")
    prefix.insert(1, "-y")
    worker = Worker(cwd, PACED, prefix=prefix)
    worker.finish(timeout=60)
    expect_completed(tally, label, worker, expected_of(data, max_line_bytes=MAX_LINE), cwd)
    written: set[str] = set()
    synced: set[str] = set()
    awaiting_directory_sync: dict[int, str] = {}
    verified = 0
    for pid, name, arguments, result in _strace_calls(log.read_text(errors="replace")):
        fd_path = _FD_PATH.match(arguments)
        path = fd_path.group(1) if fd_path else ""
        if name == "write" and path.endswith(".tmp"):
            written.add(path)
            synced.discard(path)
        elif name in ("fsync", "fdatasync") and result == 0:
            if path in written:
                synced.add(path)
            if awaiting_directory_sync.get(pid) == path:
                del awaiting_directory_sync[pid]
                verified += 1
        elif name.startswith("rename") and result == 0:
            renamed = _RENAME.match(arguments)
            if not renamed:
                continue
            source, target = renamed.groups()
            if not source.endswith(".tmp"):
                continue
            if source not in synced:
                tally.violation(label, f"{source} renamed onto {target} before an fsync")
            if pid in awaiting_directory_sync:
                tally.violation(label, "a rename came before the directory fsync of the last")
            awaiting_directory_sync[pid] = str(Path(source).parent)
    if awaiting_directory_sync:
        tally.violation(
            label, f"renames never followed by a directory fsync: {awaiting_directory_sync}"
        )
    if verified < 3:
        tally.violation(label, f"only {verified} atomic writes seen in the trace")
    tally.observe("atomic writes traced: fsync, rename, directory fsync", verified)


def part_storage(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Disk full, EIO/ENOSPC/EROFS in write, fsync and rename, read-only, a directory in the way."""
    faults = [("fsync", "EIO"), ("write", "ENOSPC"), ("rename", "EROFS")]
    if not short:
        faults += [
            ("rename", "EIO"),
            ("fsync", "ENOSPC"),
            ("write", "EIO"),
            ("rename", "ENOSPC"),
            ("fsync", "EROFS"),
        ]
    repeats = 1 if short else 4
    seeds = [rng.randrange(2**32) for _ in range(6)]
    jobs: list[Callable[[], None]] = []
    for index, (syscall, error) in enumerate(faults * repeats):
        pick = random.Random(seeds[0] + index)
        when = pick.randint(2, 7)
        jobs.append(
            functools.partial(
                _injected_fault, tally, _fresh(root, f"inject{index}"), syscall, error, when, pick
            )
        )
    scenarios: list[Callable[[Tally, Path, random.Random], None]] = [
        _disk_full,
        _read_only,
        _checkpoint_becomes_directory,
        _durability_trace,
    ]
    if not short:  # short: tests/test_chaos.py runs these as regression tests of their own
        scenarios += [heartbeat_fault, completion_on_a_slow_disk]
    for index, scenario in enumerate(scenarios):
        jobs.append(
            functools.partial(
                scenario, tally, _fresh(root, f"scenario{index}"), random.Random(seeds[1] + index)
            )
        )
    _parallel(tally, jobs)


# --- part: corrupt checkpoints -----------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "chaos"


def _corruptions(
    valid: bytes, input_size: int, short: bool, rng: random.Random
) -> list[tuple[str, bytes]]:
    """(kind, bytes) of checkpoints the worker must refuse, derived from a valid one."""
    document = json.loads(valid)
    cases: list[tuple[str, bytes]] = []
    cut_at = [n for n in range(len(valid)) if not _same_json(valid[:n], document)]
    if short:
        cut_at = sorted({0, len(valid) // 2, cut_at[-1]})
    cases += [("truncated", valid[:n]) for n in cut_at]
    cases += [
        ("zero-filled", b"\0" * len(valid)),
        ("zero-filled page", b"\0" * 4096),
        ("zero-filled tail", valid[: len(valid) // 3] + b"\0" * (len(valid) - len(valid) // 3)),
        ("whitespace", b" \n"),
        ("random bytes", rng.randbytes(len(valid))),
        ("not UTF-8", valid.replace(b'"version"', b'"versi\xffn"')),
    ]

    def edited(**changes: Any) -> bytes:
        copy = dict(document)
        for key, value in changes.items():
            if value is _DELETE:
                copy.pop(key, None)
            else:
                copy[key] = value
        return json.dumps(copy).encode()

    shapes: list[tuple[str, bytes]] = [
        ("wrong shape", b"[]"),
        ("wrong shape", b"null"),
        ("wrong shape", b"42"),
        ("wrong shape", b'"checkpoint"'),
        ("wrong shape", b"{}"),
        ("wrong shape", b"[" * 100_000 + b"]" * 100_000),
        ("wrong shape", edited(sum=_DELETE)),
        ("wrong shape", edited(sum=str(document["sum"]))),
        ("wrong shape", edited(sum=1.5)),
        ("wrong shape", json.dumps({**document, "sum": "NaN"}).replace('"NaN"', "NaN").encode()),
        ("wrong shape", edited(records=-1)),
        ("wrong shape", edited(records=True)),
        ("wrong shape", edited(offset=str(document["offset"]))),
        ("wrong shape", edited(lines=0)),
        ("wrong shape", edited(identity=_DELETE)),
        ("wrong shape", edited(identity="abc")),
        ("wrong shape", edited(input=7)),
        ("wrong shape", edited(completed="yes")),
        ("negative offset", edited(offset=-1)),
        ("offset beyond the end", edited(offset=input_size + 100, lines=document["lines"])),
        ("offset off by one", edited(offset=document["offset"] + 1)),
        ("offset off by one", edited(offset=document["offset"] - 1)),
        ("unknown version", edited(version=2)),
        ("unknown version", edited(version=0)),
        ("unknown version", edited(version="1")),
        ("unknown version", edited(version=True)),
        ("unknown version", edited(version=1.0)),
        ("unknown version", edited(version=_DELETE)),
    ]
    if short:
        shapes = (
            rng.sample(shapes[:18], 1) + rng.sample(shapes[18:22], 2) + rng.sample(shapes[22:], 1)
        )
        cases = [*cases[: len(cut_at)], rng.choice(cases[len(cut_at) :])]
    cases += shapes
    fixtures = sorted(FIXTURES.glob("checkpoints/*.json"))
    if short:
        fixtures = rng.sample(fixtures, 1)
    cases += [(f"fixture {fixture.stem}", fixture.read_bytes()) for fixture in fixtures]
    return cases


_DELETE = object()


def _same_json(raw: bytes, document: Any) -> bool:
    try:
        return bool(json.loads(raw) == document)
    except ValueError:
        return False


def _refuse_checkpoint(tally: Tally, cwd: Path, kind: str, corrupt: bytes, data: bytes) -> None:
    """A checkpoint that cannot be trusted: exit 1, one line naming it, bytes untouched."""
    label = f"corrupt/{kind}"
    (cwd / INPUT).write_bytes(data)
    (cwd / CHECKPOINT).write_bytes(corrupt)
    worker = Worker(cwd, ["--max-line-bytes", str(MAX_LINE)])
    worker.finish(timeout=60)
    tally.fault("corrupt checkpoint: " + ("fixture file" if kind.startswith("fixture") else kind))
    # An offset past the end is indistinguishable from a truncated input: input_changed.
    names: tuple[str, ...] = (CHECKPOINT, INPUT) if "offset" in kind else (CHECKPOINT,)
    expect_failure(tally, label, worker, mentions=[names])
    if (cwd / CHECKPOINT).read_bytes() != corrupt:
        tally.violation(label, "the refused checkpoint was rewritten")
    if worker.named("checkpoint_saved") or (cwd / RESULT).exists():
        tally.violation(label, "the worker carried on from a checkpoint it could not trust")


def _leftover_temp(
    tally: Tally, cwd: Path, kind: str, valid: bytes | None, temp: bytes, data: bytes
) -> None:
    """A temp file from a crashed write beside the checkpoint: ignored, removed, exact resume."""
    label = f"corrupt/leftover temp ({kind})"
    (cwd / INPUT).write_bytes(data)
    if valid is not None:
        (cwd / CHECKPOINT).write_bytes(valid)
    (cwd / f".{CHECKPOINT}.k3x9q2ab.tmp").write_bytes(temp)
    tally.fault(f"leftover temp file: {kind}")
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))
    if temp_files(cwd):
        tally.violation(label, "the leftover temp file is still there")


def part_corrupt(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Torn, zero-filled, wrong-shaped, misplaced and future checkpoints; leftover temp files."""
    data = noisy_input(rng, RATE * 2, final_newline=True)
    origin = _fresh(root, "origin")
    (origin / INPUT).write_bytes(data)
    valid = _graceful_partial_run(tally, "corrupt/origin", origin, rng)
    cases = _corruptions(valid, len(data), short, rng)
    jobs: list[Callable[[], None]] = [
        functools.partial(_refuse_checkpoint, tally, _fresh(root, f"case{i}"), kind, raw, data)
        for i, (kind, raw) in enumerate(cases)
    ]
    newer = json.loads(valid)
    temps = [
        ("zero-filled", valid, b"\0" * len(valid)),
        ("torn", valid, valid[: len(valid) // 2]),
        ("a complete newer checkpoint", valid, json.dumps({**newer, "records": 1}).encode()),
        ("no checkpoint yet", None, valid[:10]),
    ]
    if short:
        temps = rng.sample(temps, 2)
    jobs += [
        functools.partial(_leftover_temp, tally, _fresh(root, f"temp{i}"), kind, v, t, data)
        for i, (kind, v, t) in enumerate(temps)
    ]
    _parallel(tally, jobs)


# --- part: hostile input -----------------------------------------------------------------------


@st.composite
def hostile_files(draw: st.DrawFn) -> tuple[bytes, int]:
    """An input file exercising every rule of CONTRACT.md's Input, and its line limit."""
    max_line = draw(st.sampled_from([8, 32, 128, 4096]))
    pad = st.text(alphabet=" \t", max_size=3).map(str.encode)
    digits = st.one_of(
        st.integers(0, 10**18).map(str),
        st.text(alphabet="0123456789", min_size=1, max_size=30),
        st.integers(10**99, 10**100 - 1).map(str),
    )
    record = st.builds(
        lambda a, s, d, b, cr: a + s + d.encode() + b + cr,
        pad,
        st.sampled_from([b"", b"+", b"-"]),
        digits,
        pad,
        st.sampled_from([b"", b"\r"]),
    )
    bad = st.one_of(
        st.sampled_from(BAD_LINES),
        st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
        st.text(max_size=6).map(lambda t: t.encode().replace(b"\n", b"")),
        st.integers(1, 3).map(lambda extra: b"5" * (max_line + extra)),
    )
    blank = st.sampled_from(BLANK_LINES)
    if draw(st.integers(0, 9)) == 0:
        lines = draw(st.lists(bad, min_size=1, max_size=20))
    else:
        lines = draw(st.lists(st.one_of(record, record, blank, bad), max_size=40))
    endings = draw(
        st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines), max_size=len(lines))
    )
    body = b"".join(line + end for line, end in zip(lines, endings, strict=True))
    unterminated = draw(st.booleans())
    if lines and unterminated:
        body = body[: -len(endings[-1])]  # the last line without its line end
    return body, max_line


def _line_start(data: bytes, number: int) -> int:
    """The byte offset where 1-based line `number` starts."""
    offset = 0
    for _ in range(number - 1):
        offset = data.index(b"\n", offset) + 1
    return offset


def _check_hostile(cwd: Path, data: bytes, max_line: int) -> list[str]:
    """Run the worker on `data` under skip and under fail; what differs from the oracle."""
    problems: list[str] = []
    expected = expected_of(data, max_line_bytes=max_line)
    runs: dict[str, Worker] = {}
    for policy in ("skip", "fail"):
        directory = cwd / policy
        directory.mkdir(parents=True)
        (directory / INPUT).write_bytes(data)
        runs[policy] = Worker(
            directory, ["--max-line-bytes", str(max_line), "--on-bad-record", policy]
        )
    for policy, worker in runs.items():
        worker.finish(timeout=60)
        if "Traceback" in worker.stderr or worker.noise:
            problems.append(f"{policy}: traceback or stray output: {worker.stderr[-500:]}")
    skip, fail = runs["skip"], runs["fail"]
    result = _load(cwd / "skip" / RESULT) or {}
    got = tuple(result.get(k) for k in ("sum", "records", "bad_records", "offset"))
    want = (expected.sum, expected.records, expected.bad_records, expected.offset)
    if skip.code != 0 or got != want:
        problems.append(f"skip: exit {skip.code}, result {got} != oracle {want}")
    logged = [e.get("line") for e in skip.named("bad_record")]
    if logged != list(expected.bad_lines[:100]):
        problems.append(f"skip: bad_record lines {logged} != oracle {expected.bad_lines[:100]}")
    if not expected.bad_lines:
        if fail.code != 0:
            problems.append(f"fail: exit {fail.code} on an input without a bad line")
        return problems
    first = expected.bad_lines[0]
    fatal = fail.named("fatal_error")
    message = str(fatal[0].get("message", "")) if fatal else ""
    if fail.code != 1 or len(fatal) != 1 or not re.search(rf"\bline {first}\b", message):
        problems.append(f"fail: exit {fail.code}, errors {fatal}; first bad line is {first}")
    start = _line_start(data, first)
    checkpoint = _load(cwd / "fail" / CHECKPOINT) or {}
    before = expected_of(data[:start], max_line_bytes=max_line)
    got = tuple(checkpoint.get(k) for k in ("offset", "records", "bad_records", "sum"))
    want = (start, before.records, before.bad_records, before.sum)
    if got != want:
        problems.append(f"fail: checkpoint {got} != start of line {first} {want}")
    return problems


def _huge_line(tally: Tally, cwd: Path) -> None:
    """A 200 MB last line without '\\n': one bad record, and the worker's memory stays bounded."""
    label = "hostile/200 MB line"
    head = b"5\n-3\n"
    size = 200 * 1024 * 1024
    path = cwd / INPUT
    with path.open("wb") as handle:
        handle.write(head)
        block = b"9" * (8 * 1024 * 1024)
        for _ in range(size // len(block)):
            handle.write(block)
    tally.fault("200 MB line without a newline")
    try:
        skip = Worker(cwd, ["--on-bad-record", "skip"])
        skip.finish(timeout=120)
        tally.peak("worker peak RSS, 200 MB line (MB)", skip.peak_rss_mb)
        expect_completed(tally, label, skip, Expected(3, 2, 1, 2, len(head) + size, (3,)), cwd)
        fail = Worker(
            cwd, ["--on-bad-record", "fail", "--checkpoint", "fail.json", "--result", "f.json"]
        )
        fail.finish(timeout=120)
        tally.peak("worker peak RSS, 200 MB line (MB)", fail.peak_rss_mb)
        expect_failure(tally, label + " under fail", fail, mentions=["line 3"])
        stopped = _load(cwd / "fail.json") or {}
        if (stopped.get("offset"), stopped.get("records"), stopped.get("sum")) != (len(head), 2, 2):
            tally.wrong(label, f"fail: checkpoint {stopped} does not stop before line 3")
        for worker in (skip, fail):
            if worker.peak_rss_mb > RSS_LIMIT_MB:
                tally.violation(label, f"peak RSS {worker.peak_rss_mb:.0f} MB > {RSS_LIMIT_MB} MB")
    finally:
        path.unlink()
    small = _fresh(cwd, "baseline")
    (small / INPUT).write_bytes(head)
    baseline = Worker(small, [])
    baseline.finish(timeout=60)
    tally.peak("worker peak RSS, 5-byte input (MB)", baseline.peak_rss_mb)


_EXAMPLES: list[tuple[bytes, int]] = [
    (b"\n".join(BAD_LINES), 4096),  # a file of nothing but bad lines
    (  # mixed line endings, 100-digit numbers, NUL, invalid UTF-8, no final '\n'
        b"1\r\n-2\n\r\n +3\t\r\n\t\n"
        + b"9" * 100
        + b"\n\x00\n7\n\xff\xfe\n\xc3\x28\n  \n-"
        + b"8" * 100,
        128,
    ),
    (b"12345678\n123456789\n12345678\r\n1234567\r\n", 8),  # the limit exactly, '\r' counted
]


def part_hostile(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Generated hostile inputs through the real worker under skip and fail; a 200 MB line."""
    runs = Counter[str]()
    failure: list[str] = []

    @settings(
        max_examples=2 if short else 80,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate] if short else list(Phase),
        suppress_health_check=list(HealthCheck),
    )
    @given(case=hostile_files())
    def check(case: tuple[bytes, int]) -> None:
        runs["examples"] += 1
        cwd = root / f"example{runs['examples']}"
        try:
            problems = _check_hostile(cwd, *case)
        finally:
            shutil.rmtree(cwd, ignore_errors=True)
        if problems:
            failure[:] = [f"input {case[0][:300]!r} max_line_bytes={case[1]}", *problems]
            raise AssertionError("\n".join(problems))

    for data, max_line in reversed(_EXAMPLES):
        check = example(case=(data, max_line))(check)
    try:
        seed(rng.randrange(2**32))(check)()
    except AssertionError:
        tally.wrong("hostile", "\n".join(failure) or traceback.format_exc())
    tally.fault("hostile input files (hypothesis), each under skip and fail", runs["examples"])
    _huge_line(tally, _fresh(root, "huge"))


# --- part: input changes -----------------------------------------------------------------------

_FOLLOW = ["--follow", "--poll-interval", "0.05", "--max-line-bytes", str(MAX_LINE)]


def _same_size_replacement(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Replaced by same-size content before a restart: input_changed; fail or start over."""
    label = "changes/same-size replacement"
    data = noisy_input(rng, RATE * 3, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    before = _graceful_partial_run(tally, label, cwd, rng)
    changed = bytearray(data)
    index = next(i for i, byte in enumerate(changed) if 48 <= byte <= 57)
    changed[index] = 48 + (changed[index] - 48 + 1) % 10
    (cwd / INPUT).write_bytes(bytes(changed))
    tally.fault("input replaced by same-size content")
    _expect_change_refused(tally, label, cwd, before, "content_changed")
    _expect_change_restarts(tally, label, cwd, expected_of(bytes(changed), max_line_bytes=MAX_LINE))


def _expect_change_refused(tally: Tally, label: str, cwd: Path, before: bytes, reason: str) -> None:
    tally.restart()
    worker = Worker(cwd, ["--max-line-bytes", str(MAX_LINE)])
    worker.finish(timeout=60)
    expect_failure(tally, label, worker, mentions=[INPUT])
    if not worker.named("input_changed", reason=reason, action="fail"):
        tally.violation(label, f"no input_changed reason={reason} action=fail")
    if (cwd / CHECKPOINT).read_bytes() != before:
        tally.violation(label, "the checkpoint changed although the run refused the input")


def _expect_change_restarts(tally: Tally, label: str, cwd: Path, expected: Expected) -> None:
    tally.restart()
    worker = Worker(cwd, ["--max-line-bytes", str(MAX_LINE), "--on-input-change", "restart"])
    worker.finish(timeout=60)
    if not worker.named("input_changed", action="restart", level="warning"):
        tally.violation(label, "no input_changed action=restart warning")
    expect_completed(tally, label + " (restart)", worker, expected, cwd)


def _truncated_below_offset(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Truncated below the checkpoint's offset: input_changed truncated; fail or start over."""
    label = "changes/truncated"
    data = noisy_input(rng, RATE * 3, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    before = _graceful_partial_run(tally, label, cwd, rng)
    offset = json.loads(before)["offset"]
    shorter = data[: rng.randint(0, max(0, offset - 1))]
    (cwd / INPUT).write_bytes(shorter)
    tally.fault("input truncated below the offset")
    _expect_change_refused(tally, label, cwd, before, "truncated")
    _expect_change_restarts(tally, label, cwd, expected_of(shorter, max_line_bytes=MAX_LINE))


def _appended_while_following(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Appends while following, numbers split across writes and across a restart: counted once."""
    label = "changes/appended while following"
    path = cwd / INPUT
    path.write_bytes(b"1\n2\n")
    worker = Worker(cwd, _FOLLOW)
    if worker.wait_for("caught_up", offset=4) is None:
        tally.violation(label, "never caught up with the first lines")

    def append(piece: bytes) -> None:
        with path.open("ab") as handle:
            handle.write(piece)

    append(b"12")
    time.sleep(0.25)  # several polls: the worker holds "12" until its '\n' arrives
    append(b"345\n")
    tally.fault("number split across two appends")
    more = noisy_input(rng, 400, final_newline=True)
    cuts = sorted(rng.sample(range(1, len(more)), 30))
    for start, end in zip([0, *cuts], [*cuts, len(more)], strict=True):
        append(more[start:end])
        time.sleep(rng.uniform(0.0, 0.03))
    tally.fault("appends while following", 31)
    data = path.read_bytes()
    want = expected_of(data, max_line_bytes=MAX_LINE, following=True)
    if worker.wait_for("caught_up", timeout=30, offset=want.offset) is None:
        tally.violation(label, f"never caught up at offset {want.offset}")
    append(b"77")  # held, unconsumed, when the worker stops
    time.sleep(0.2)
    worker.send(signal.SIGTERM)
    worker.finish(timeout=30)
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code} after SIGTERM while following")
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(path.read_bytes(), following=True))
    tally.restart()
    worker = Worker(cwd, _FOLLOW)
    worker.wait_ready()
    append(b"8\n")
    tally.fault("number split across a restart")
    data = path.read_bytes()
    want = expected_of(data, max_line_bytes=MAX_LINE, following=True)
    caught = worker.wait_for("caught_up", timeout=30, offset=want.offset)
    if caught is None or caught.get("sum") != want.sum:
        tally.wrong(label, f"caught up with {caught}, oracle sum {want.sum} at {want.offset}")
    worker.send(signal.SIGTERM)
    worker.finish(timeout=30)
    tally.final(label + " (followed)", _load(cwd / CHECKPOINT) or {}, want)
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def _follow_until_caught_up(tally: Tally, label: str, cwd: Path, args: Sequence[str]) -> Worker:
    worker = Worker(cwd, [*_FOLLOW, *args])
    want = expected_of((cwd / INPUT).read_bytes(), max_line_bytes=MAX_LINE, following=True)
    if worker.wait_for("caught_up", timeout=30, offset=want.offset) is None:
        tally.violation(label, f"never caught up at offset {want.offset}")
    time.sleep(0.1)  # the checkpoint timer writes the caught-up position
    return worker


def _changed_while_following(
    tally: Tally, cwd: Path, rng: random.Random, *, change: str, policy: str
) -> None:
    """Deleted, truncated, or replaced by a directory while followed: input_changed by policy."""
    label = f"changes/{change} while following ({policy})"
    path = cwd / INPUT
    data = noisy_input(rng, 300, final_newline=True)
    path.write_bytes(data)
    worker = _follow_until_caught_up(tally, label, cwd, ["--on-input-change", policy])
    if change == "deleted":
        path.unlink()
        reason = "deleted"
    elif change == "truncated":
        path.write_bytes(data[: len(data) // 3])  # in place: same inode, fewer bytes
        reason = "truncated"
    else:
        path.rename(cwd / "aside.txt")
        path.mkdir()
        reason = "replaced"  # or "deleted", if a poll came between the two calls
    tally.fault(f"input {change} while following")
    if policy == "fail":
        worker.finish(timeout=30)
        expect_failure(tally, label, worker, mentions=[INPUT])
        reasons = {e.get("reason") for e in worker.named("input_changed", action="fail")}
        if not reasons & {reason, "deleted" if change == "directory" else reason}:
            tally.violation(label, f"input_changed reasons {reasons}, expected {reason}")
        check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data, following=True))
        return
    if worker.wait_for("input_changed", timeout=10, action="restart") is None:
        tally.violation(label, f"no input_changed action=restart (reason {reason})")
    if change == "directory":
        time.sleep(0.2)
        path.rmdir()
    fresh = noisy_input(rng, 200, final_newline=True)
    if change != "truncated":
        path.write_bytes(fresh)
    else:
        fresh = path.read_bytes()
    want = expected_of(fresh, max_line_bytes=MAX_LINE, following=True)
    caught = worker.wait_for("caught_up", timeout=30, offset=want.offset, sum=want.sum)
    if caught is None:
        tally.wrong(label, f"never caught up with the new input: oracle {want}")
    worker.send(signal.SIGTERM)
    worker.finish(timeout=30)
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code} after SIGTERM")
    expect_no_traceback(tally, label, worker)
    tally.final(label, _load(cwd / CHECKPOINT) or {}, want)


def _directory_before_restart(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """The input is a directory when the worker starts: exit 1, checkpoint untouched."""
    label = "changes/input replaced by a directory"
    data = noisy_input(rng, RATE * 3, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    before = _graceful_partial_run(tally, label, cwd, rng)
    (cwd / INPUT).rename(cwd / "aside.txt")
    (cwd / INPUT).mkdir()
    tally.fault("input replaced by a directory before a restart")
    tally.restart()
    worker = Worker(cwd, ["--max-line-bytes", str(MAX_LINE)])
    worker.finish(timeout=30)
    expect_failure(tally, label, worker, mentions=[INPUT])
    if (cwd / CHECKPOINT).read_bytes() != before:
        tally.violation(label, "the checkpoint changed")
    (cwd / INPUT).rmdir()
    (cwd / "aside.txt").rename(cwd / INPUT)
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def part_changes(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """Replaced, truncated, appended, deleted, turned into a directory: each its behaviour."""
    scenarios: list[Callable[[Tally, Path, random.Random], None]] = [
        _same_size_replacement,
        _truncated_below_offset,
        _appended_while_following,
        _directory_before_restart,
    ]
    for change in ("deleted", "truncated", "directory"):
        for policy in ("fail", "restart"):
            if short and policy == "restart" and change != "deleted":
                continue
            scenarios.append(
                functools.partial(_changed_while_following, change=change, policy=policy)
            )
    jobs: list[Callable[[], None]] = []
    for round_ in range(1 if short else 3):
        for index, scenario in enumerate(scenarios):
            jobs.append(
                functools.partial(
                    scenario,
                    tally,
                    _fresh(root, f"round{round_}-{index}"),
                    random.Random(rng.randrange(2**32)),
                )
            )
    _parallel(tally, jobs)


# --- part: shutdown under load -----------------------------------------------------------------


def _shutdown_case(tally: Tally, cwd: Path, rng: random.Random, case: str) -> None:
    """SIGTERM in one situation: exit 0 within the shutdown timeout, final checkpoint whole."""
    label = f"shutdown/{case}"
    prefix: Sequence[str] = ()
    args = list(PACED)
    if case == "reading at full speed":
        big = RepeatedInput(noisy_block(rng), 60)
        big.write(cwd / INPUT)
        oracle: Oracle = big.at
        expected = big.expected
        args = ["--max-line-bytes", str(MAX_LINE)]
    else:
        data = noisy_input(rng, RATE * 4, final_newline=True)
        (cwd / INPUT).write_bytes(data)
        oracle = prefix_oracle(data, following=case == "following an idle file")
        expected = expected_of(data, max_line_bytes=MAX_LINE)
        if case == "checkpointing on a slow disk":
            args += ["--checkpoint-interval", "0.001"]
            prefix = _strace("/dev/null", "fsync", "fsync:delay_enter=40000")
        elif case == "following an idle file":
            args = list(_FOLLOW)
    worker = Worker(cwd, args, prefix=prefix)
    if case == "following an idle file":
        worker.wait_for("caught_up", timeout=30)
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        worker.wait_ready()
        time.sleep(rng.uniform(0.05, 0.5))
    sent = worker.send(signal.SIGTERM)
    worker.finish(timeout=30)
    assert worker.ended is not None
    took = worker.ended - sent
    tally.fault(f"SIGTERM while {case}")
    tally.peak(f"shutdown while {case} (s)", took)
    if worker.code != 0:
        tally.violation(label, f"exit {worker.code}, expected 0")
    if took > SHUTDOWN_TIMEOUT:
        tally.violation(label, f"{took:.2f} s from SIGTERM to exit > {SHUTDOWN_TIMEOUT} s")
    expect_no_traceback(tally, label, worker)
    check_on_disk(tally, label, cwd / CHECKPOINT, oracle)
    if not worker.completed:
        expect_shutdown_save(tally, label, worker, cwd / CHECKPOINT, None)
    finish_run(tally, label, cwd, expected)
    (cwd / INPUT).unlink()  # up to 60 MB: not kept for pytest's last three runs


def shutdown_on_a_stalled_disk(tally: Tally, cwd: Path, rng: random.Random) -> None:
    """Every fsync takes 0.8 s: the worker still exits within shutdown_timeout (plus the one
    fsync in progress, which no process can interrupt), with a whole checkpoint."""
    label = "shutdown/stalled disk"
    data = noisy_input(rng, RATE * 4, final_newline=True)
    (cwd / INPUT).write_bytes(data)
    timeout, stall = 1.0, 0.8
    prefix = _strace("/dev/null", "fsync", f"fsync:delay_enter={int(stall * 1e6)}")
    args = [*PACED, "--checkpoint-interval", "0.2", "--shutdown-timeout", str(timeout)]
    worker = Worker(cwd, args, prefix=prefix)
    worker.wait_ready()
    time.sleep(rng.uniform(0.3, 1.0))
    sent = worker.send(signal.SIGTERM)
    worker.finish(timeout=30)
    assert worker.ended is not None
    took = worker.ended - sent
    tally.fault("SIGTERM with every fsync stalled 0.8 s")
    tally.peak("shutdown with fsync stalled 0.8 s, shutdown_timeout 1 s (s)", took)
    if took > timeout + stall + 0.5:
        tally.violation(label, f"{took:.2f} s from SIGTERM to exit (shutdown_timeout {timeout} s)")
    if worker.code == 1:
        expect_failure(tally, label, worker, mentions=["shutdown_timeout"])
    elif worker.code != 0:
        tally.violation(label, f"exit {worker.code}, expected 0 or 1")
    expect_no_traceback(tally, label, worker)
    check_on_disk(tally, label, cwd / CHECKPOINT, prefix_oracle(data))
    finish_run(tally, label, cwd, expected_of(data, max_line_bytes=MAX_LINE))


def noisy_block(rng: random.Random, size: int = 1 << 20) -> bytes:
    """About `size` bytes of plain numbers (the fast path) ending in '\\n'."""
    count = size // 8
    return ("\n".join(str(rng.randrange(-(10**6), 10**6)) for _ in range(count)) + "\n").encode()


def part_shutdown(tally: Tally, root: Path, rng: random.Random, short: bool) -> None:
    """SIGTERM while reading flat out, while checkpointing, while paced, while idle-following."""
    cases = [
        "reading at full speed",
        "checkpointing on a slow disk",
        "paced",
        "following an idle file",
    ]
    rounds = 1 if short else 6
    seeds = [rng.randrange(2**32) for _ in range(2)]
    jobs: list[Callable[[], None]] = [
        functools.partial(
            _shutdown_case, tally, _fresh(root, f"case{i}"), random.Random(seeds[0] + i), case
        )
        for i, case in enumerate(cases * rounds)
    ]
    jobs += [
        functools.partial(
            shutdown_on_a_stalled_disk,
            tally,
            _fresh(root, f"stalled{i}"),
            random.Random(seeds[1] + i),
        )
        for i in range(0 if short else 4)  # short: a regression test of its own
    ]
    _parallel(tally, jobs)


# --- the campaign ------------------------------------------------------------------------------

PARTS: dict[str, Callable[[Tally, Path, random.Random, bool], None]] = {
    "crashes": part_crashes,
    "signals": part_signals,
    "storage": part_storage,
    "corrupt": part_corrupt,
    "hostile": part_hostile,
    "changes": part_changes,
    "shutdown": part_shutdown,
    "rotation": part_rotation,
    "fleet": part_fleet,
}


def run_part(
    name: str, root: Path, *, short: bool, seed_value: int, tally: Tally | None = None
) -> Tally:
    """Run one part in `root`; its tally (or add to `tally`)."""
    tally = tally or Tally()
    rng = random.Random(seed_value ^ zlib.crc32(name.encode()))
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    try:
        PARTS[name](tally, work, rng, short)
    except Unavailable as why:
        tally.skip(str(why))
    return tally


_ROWS = [
    ("restarts", "restarts after a fault or stop"),
    ("records_lost", "records lost"),
    ("records_duplicated", "records duplicated"),
    ("corrupt_checkpoints_seen", "corrupt checkpoints seen"),
    ("wrong_answers", "wrong answers"),
    ("contract_violations", "contract violations"),
]


def render(report: dict[str, Any]) -> str:
    """The campaign's table, as printed and as pasted into the README."""
    labels = [*report["faults"], *report["observed"], *report["peaks"]]
    width = max(60, *(len(label) + 4 for label in labels))
    lines = [
        f"checkpoint-worker chaos campaign: {report['mode']} mode, seed {report['seed']}, "
        f"{report['seconds']:.0f} s",
        "",
        f"{'faults injected, by kind':<{width}}{'count':>8}",
    ]
    lines += [f"  {kind:<{width - 2}}{count:>8}" for kind, count in report["faults"].items()]
    lines.append(f"  {'total':<{width - 2}}{report['faults_total']:>8}")
    lines.append("")
    for key, title in _ROWS:
        lines.append(f"{title:<{width}}{report[key]:>8}")
    lines.append(f"{'final answers compared with the oracle':<{width}}{report['final_checks']:>8}")
    lines.append("")
    lines.append("observed")
    lines += [f"  {what:<{width - 2}}{count:>8}" for what, count in report["observed"].items()]
    lines += [f"  {what:<{width - 2}}{value:>8.2f}" for what, value in report["peaks"].items()]
    if report["skipped"]:
        lines.append("")
        lines += [f"skipped: {why}" for why in report["skipped"]]
    verdict = "PASS" if report["clean"] else "FAIL"
    lines += ["", f"{verdict}: lost, duplicated, corrupt, wrong and violations must all be 0"]
    if report["problems"]:
        lines += ["", "problems:", *(f"  {p}" for p in report["problems"])]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--short", action="store_true", help="the quick version make test runs")
    parser.add_argument("--part", action="append", choices=list(PARTS), help="only these parts")
    parser.add_argument("--seed", type=int, default=None, help="replay a campaign")
    default_json = Path(tempfile.gettempdir()) / "checkpoint-worker-chaos" / "latest.json"
    parser.add_argument("--json", type=Path, default=default_json, help=f"default {default_json}")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    seed_value = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    sys.set_int_max_str_digits(0)
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    tally = Tally()
    started = time.monotonic()
    try:
        for name in args.part or list(PARTS):
            print(f"chaos: {name} ...", file=sys.stderr, flush=True)
            began = time.monotonic()
            run_part(name, root, short=args.short, seed_value=seed_value, tally=tally)
            print(
                f"chaos: {name} done in {time.monotonic() - began:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "mode": "short" if args.short else "full",
        "seed": seed_value,
        "parts": args.part or list(PARTS),
        "seconds": round(time.monotonic() - started, 1),
        **tally.to_json(),
        "clean": tally.clean,
    }
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n(written to {args.json}{'; work kept in ' + str(root) if args.keep else ''})")
    return 0 if tally.clean else 1


if __name__ == "__main__":
    sys.exit(main())
