"""The checks every part makes of a worker and of the files it left, each counted in the tally.

`check_*` hold a file on disk to the oracle; `expect_*` hold a finished worker to what it
promises (its exit code, its one error line, no traceback, its last checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.chaos.inputs import Oracle
from tests.chaos.tally import Tally
from tests.chaos.workers import CHECKPOINT, RESULT
from tests.oracle import Expected
from tests.processes import Event, WorkerProcess

__all__ = [
    "bytes_or_none",
    "check_on_disk",
    "check_result",
    "expect_completed",
    "expect_failure",
    "expect_no_traceback",
    "expect_shutdown_save",
    "load_json",
    "same_figures",
    "temp_files",
]


def load_json(path: Path) -> dict[str, Any] | None:
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
    result = load_json(path)
    if result is None:
        tally.wrong(label, f"no readable {path.name} after the final run")
        tally.final(label, {}, expected)
        return
    tally.final(label, result, expected)


def same_figures(document: dict[str, Any], event: Event) -> bool:
    return all(document.get(k) == event.get(k) for k in ("offset", "records", "bad_records", "sum"))


def expect_no_traceback(tally: Tally, label: str, worker: WorkerProcess) -> None:
    if "Traceback" in worker.stderr or worker.noise:
        text = (worker.stderr + "\n".join(worker.noise)).strip()
        tally.violation(label, f"output that is not one JSON line per event:\n{text[-2000:]}")


def expect_failure(
    tally: Tally,
    label: str,
    worker: WorkerProcess,
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
    tally: Tally, label: str, worker: WorkerProcess, expected: Expected, cwd: Path
) -> None:
    """Exit 0 after `completed`, a result equal to the oracle's, a checkpoint saying so."""
    if not worker.completed:
        tally.violation(label, f"exit {worker.code} without completing: {worker.tail()}")
    expect_no_traceback(tally, label, worker)
    check_result(tally, label, cwd / RESULT, expected)
    checkpoint = load_json(cwd / CHECKPOINT) or {}
    if checkpoint.get("completed") is not True or checkpoint.get("offset") != expected.offset:
        tally.violation(label, f"the last checkpoint is not the completion one: {checkpoint}")


def bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def expect_shutdown_save(
    tally: Tally, label: str, worker: WorkerProcess, path: Path, before: bytes | None
) -> None:
    """After a graceful stop, the checkpoint on disk is the `reason: shutdown` save; or, when the
    signal came before start-up finished (no timer save: nothing read), it is untouched."""
    saved = worker.named("checkpoint_saved", reason="shutdown")
    disk = load_json(path)
    if saved:
        if disk is None or not same_figures(disk, saved[-1]):
            tally.wrong(label, f"checkpoint on disk {disk} is not the shutdown save {saved[-1]}")
    elif worker.named("checkpoint_saved"):
        tally.violation(label, "no checkpoint_saved reason=shutdown after reading had begun")
    elif bytes_or_none(path) != before:
        tally.violation(label, "no shutdown save, yet the checkpoint changed")
    else:
        tally.observe("graceful stops before start-up finished: nothing read, checkpoint untouched")


def temp_files(directory: Path, target: str = CHECKPOINT) -> list[Path]:
    return sorted(directory.glob(f".{target}.*.tmp"))
