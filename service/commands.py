"""The commands besides `run`: generate, status and reset. Each returns an exit code."""

from __future__ import annotations

import os
import random
import stat
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.core.decimal_text import decimal_of, exact_json
from service.core.names import shown
from service.core.position import Position, percent_done
from service.errors import WorkerError
from service.settings import Settings
from service.sources.files.source import (
    file_entry,
    input_patterns,
    match_saved_files,
    refuse_shared_files,
    saved_state_of_plain_path,
)
from service.storage.atomic import atomic_write, remove_left_temp_files, written_path
from service.storage.checkpoint import CheckpointStore, FileState, identify_input
from service.storage.lock import WorkerLock
from service.telemetry.logs import Logger

__all__ = ["generate", "reset", "status"]

LARGEST_NUMBER = 999_999
_LINES_PER_PIECE = 100_000


def _numbers(count: int, seed: int) -> Iterator[bytes]:
    """`count` random integers in [0, LARGEST_NUMBER], one per line, as pieces of text."""
    rng = random.Random(seed)
    draw = rng.randrange
    for start in range(0, count, _LINES_PER_PIECE):
        size = min(_LINES_PER_PIECE, count - start)
        numbers = [str(draw(LARGEST_NUMBER + 1)) for _ in range(size)]
        yield ("\n".join(numbers) + "\n").encode()


def generate(
    output: Path, count: int, seed: int | None, *, force: bool, if_missing: bool, log: Logger
) -> int:
    """Write `count` random numbers to `output` atomically; the same seed gives the same file."""
    name = shown(str(output))
    try:
        existing: os.stat_result | None = output.stat()
    except (FileNotFoundError, NotADirectoryError):
        existing = None
    except OSError as error:  # a name too long, a loop of links, a directory it cannot look in
        raise WorkerError(f"cannot write {name}: {error.strerror}") from None
    if existing is not None:
        if not stat.S_ISREG(existing.st_mode):
            raise WorkerError(f"{name} exists and is not a regular file; give a file's path")
        if if_missing:
            log.info("input_exists", output=name, bytes=existing.st_size)
            return 0
        if not force:
            raise WorkerError(f"{name} exists; refusing to overwrite it without --force")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    remove_left_temp_files(output)  # a killed generate's: the real file is intact
    try:
        atomic_write(output, _numbers(count, seed))
    except OSError as error:
        raise WorkerError(f"cannot write {name}: {error.strerror}") from None
    log.info("input_generated", output=name, count=count, seed=seed, bytes=output.stat().st_size)
    return 0


def _present_files(settings: Settings, saved: tuple[FileState, ...]) -> list[dict[str, Any]]:
    """Each file of the input present now, with its saved position (0 for one not yet read),
    and whether it still holds what the checkpoint consumed of it (`changed`)."""
    patterns = input_patterns(settings)
    plain = patterns.plain_path
    pairs: list[tuple[str, FileState | None, int]]
    if plain is not None:
        try:
            info = plain.stat()
        except OSError:
            return []
        if not stat.S_ISREG(info.st_mode):
            return []  # a directory or a FIFO in its place: `run` refuses it, with why
        size = info.st_size
        pairs = [(str(plain), saved_state_of_plain_path(saved, str(plain)), size)]
    else:
        pairing = match_saved_files(saved, patterns.scan())
        pairs = [(m.path, s, m.size) for _k, m, s in pairing.resumed]
        pairs += [(m.path, None, m.size) for m in pairing.new.values()]
    entries = []
    for path, state, size in sorted(pairs, key=lambda pair: pair[0]):
        entry = file_entry(path, state.position if state else Position(), size)
        entry["changed"] = state is not None and _changed_since(path, state, size)
        entries.append(entry)
    return entries


def _changed_since(path: str, state: FileState, size: int) -> bool:
    """Whether the file no longer holds the prefix the checkpoint consumed: the check `run`
    makes before it reads on (shorter than the offset, or other bytes in that prefix)."""
    offset = state.position.offset
    if size < offset:
        return True
    if offset == 0 or state.identity is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False  # gone since the scan: the next run says what became of it
    try:
        return identify_input(fd, offset) != state.identity
    except OSError:  # replaced by a directory since the look, or unreadable: `run` says why
        return False
    finally:
        os.close(fd)


def _percent(offset: int, size: int | None) -> float | None:
    return None if size is None else round(percent_done(offset, size), 2)


def _status_of(settings: Settings) -> dict[str, Any]:
    checkpoint = CheckpointStore(settings.checkpoint).load()
    position = checkpoint.position if checkpoint else Position()
    files = _present_files(settings, checkpoint.files if checkpoint else ())
    size: int | None = None
    if files or input_patterns(settings).plain_path is None:
        # Files no longer present count with the bytes consumed from them.
        present_offsets = sum(f["offset"] for f in files)
        size = sum(f["size"] for f in files) + position.offset - present_offsets
    # Completed as of the last run, and nothing since: an input grown past it is not done.
    grown = size is not None and size > position.offset
    completed = checkpoint is not None and checkpoint.completed and not grown
    for entry in files:
        caught_up = entry["offset"] >= entry["size"]
        entry["state"] = ("done" if completed else "caught_up") if caught_up else "reading"
        if entry.pop("changed"):
            entry["state"] = "changed"
    changed = [entry["path"] for entry in files if entry["state"] == "changed"]
    return {
        "checkpoint": shown(str(settings.checkpoint)),
        "exists": checkpoint is not None,
        "input": input_patterns(settings).describe(),
        **asdict(position),
        "input_size": size,
        "percent": None if changed else _percent(position.offset, size),
        "input_changed": changed,
        "completed": completed,
        "updated_at": checkpoint.updated_at if checkpoint else None,
        "files": files,
    }


def _size_shown(size: int | None, settings: Settings) -> str:
    if size is not None:
        return f"{size:,} bytes"
    plain = input_patterns(settings).plain_path
    if plain is not None and os.path.lexists(plain):
        return "not a regular file"
    return "missing"


def status(settings: Settings, *, as_json: bool) -> int:
    """Print the checkpoint as a person wants it (or as JSON)."""
    report = _status_of(settings)
    if as_json:
        print(exact_json(report))
        return 0
    if not report["exists"]:
        print(f"no checkpoint at {report['checkpoint']}: the next run starts at the beginning")
    size = report["input_size"]
    rows = [
        ("checkpoint", report["checkpoint"]),
        ("input", f"{report['input']} ({_size_shown(size, settings)})"),
        ("offset", f"{report['offset']:,}"),
        ("records", f"{report['records']:,}"),
        ("bad_records", f"{report['bad_records']:,}"),
        ("sum", decimal_of(report["sum"])),
        ("percent", "-" if report["percent"] is None else f"{report['percent']:.2f}%"),
        ("completed", "yes" if report["completed"] else "no"),
        ("updated_at", shown(str(report["updated_at"])) if report["updated_at"] else "-"),
    ]
    for name, value in rows:
        print(f"{name:<12}{value}")
    for path in report["input_changed"]:
        print(
            f"changed     {path} no longer holds what the checkpoint consumed of it: the next "
            "run reports input_changed (on_input_change decides what follows)"
        )
    if len(report["files"]) > 1 or input_patterns(settings).plain_path is None:
        print(f"files       {len(report['files'])}")
        for entry in report["files"]:
            percent = _percent(entry["offset"], entry["size"])
            shown_percent = "-" if entry["state"] == "changed" else f"{percent:.2f}%"
            print(
                f"  {entry['path']}  {shown_percent}  records {entry['records']:,}  "
                f"sum {decimal_of(entry['sum'])}  {entry['state'].replace('_', ' ')}"
            )
    sys.stdout.flush()
    return 0


def reset(settings: Settings, log: Logger) -> int:
    """Remove the checkpoint and the result; refuse while a worker holds the lock, and when
    either is the input (`run` refuses such settings too): that is data, not state. All or
    nothing: what cannot be removed is found before anything is."""
    refuse_shared_files(settings, input_patterns(settings).plain_path)
    checkpoint = written_path(settings.checkpoint)  # a link's file, as every save wrote it
    # The result first, the checkpoint last: stopped half-way, the next run still resumes.
    named = [(settings.result, written_path(settings.result)), (settings.checkpoint, checkpoint)]
    for name, path in named:
        _refuse_to_remove(name, path)
    lock = WorkerLock(settings.checkpoint)
    lock.acquire(purpose="reset")
    try:
        removed = []
        for name, path in named:
            try:
                path.unlink()
                removed.append(shown(str(name)))
            except FileNotFoundError:
                pass
            except OSError as error:
                raise WorkerError(f"cannot remove {shown(str(name))}: {error.strerror}") from None
        removed += [shown(str(temp)) for temp in remove_left_temp_files(checkpoint)]
    finally:
        lock.release()
    log.info("reset", removed=removed)
    return 0


def _refuse_to_remove(name: Path, path: Path) -> None:
    """A WorkerError unless `path` is a regular file whose directory lets it go, or nothing."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # nothing there (or nothing reachable): nothing to remove
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise WorkerError(f"cannot remove {shown(str(name))}: it is {what}; nothing removed")
    if not os.access(path.parent, os.W_OK | os.X_OK):  # a read-only mount, a locked directory
        raise WorkerError(
            f"cannot remove {shown(str(name))}: its directory is not writable; nothing removed"
        )
