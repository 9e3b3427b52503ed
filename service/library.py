"""The seed's `checkpoint_stream` library, over the worker's checkpoint file and input rules.

    from service import load_checkpoint, save_checkpoint, number_stream

    offset, running_sum = load_checkpoint()
    for offset, number in number_stream("numbers.txt", offset):
        running_sum += number
        save_checkpoint(offset, running_sum)  # now and then

`service.aio` has the same three for coroutines.

Rule 1: one checkpoint file for the library and the worker: each resumes what the other saved,
        and a save is atomic and durable like the worker's (temp file, fsync, rename).
Rule 2: the counts travel with the sum inside a process. `load_checkpoint` hands a file's lines,
        records and bad records to the `number_stream` that starts at its offset, the stream
        counts on, and `save_checkpoint(pos, ...)` saves what the stream had counted when it
        yielded `pos`: at hand for the last position it yielded, counted again from where the
        stream started for an earlier one (a read of the bytes between). Each of the last few
        streams of a file keeps its own counts. A save at a position no stream of this process
        yielded saves the counts passed to it (zero by default); a stream that starts at an
        offset no loaded checkpoint or earlier stream reached counts from zero there. Within
        the process, files are told apart by their absolute path.
Rule 3: a checkpoint of several files (the worker's, of a glob) must be told which file:
        `load_checkpoint(input=...)` gives that file's own offset and sum, and `save_checkpoint`
        replaces that file's entry alone, keeping the others. An entry is the file's by its
        inode first, as the worker knows files, so a file named another way (from another
        directory) is never given a second entry, which would count it twice.
Rule 4: a save takes the worker's lock for its instant, so never while a worker runs on it.
Rule 5: a stream starts where a line starts, and a save is where a line ends. An offset inside
        a line is a ValueError. The one offset that is neither, the end of a last line counted
        without its '\n', reads on after the end of that line once it has come (its '\n',
        after spaces, tabs or a '\r'); bytes of another kind after it mean the line went on:
        the input changed, as the worker says too (service/sources/files/line_end.py).
"""

from __future__ import annotations

import errno
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from service.core.parsing import LineParser, Region, line_values
from service.core.position import Position
from service.errors import CheckpointOfSeveralFiles, InputChanged
from service.settings import GLOB_CHARACTERS, MAX_LINE_BYTES
from service.sources.files.changes import Change, Look, classify
from service.sources.files.line_end import Ending, counted_line_ends, read_ending
from service.storage.atomic import open_regular_file, replaceable
from service.storage.checkpoint import (
    Checkpoint,
    CheckpointStore,
    FileState,
    generation_of,
    identify_input,
    same_generation,
    total_of,
)
from service.storage.lock import WorkerLock

__all__ = ["SavedCheckpoint", "load_checkpoint", "number_stream", "save_checkpoint"]

STREAM_CHUNK_BYTES = 256 * 1024
DEFAULT_MAX_LINE_BYTES = 4096

Counts = tuple[int, int, int, int]  # offset, lines, records, bad_records: counted at that offset
STREAMS_KEPT = 8  # streams of one file whose counts a save can still find (Rule 2)


@dataclass
class _Reached:
    """What one stream counted: where it started (with its line limit), from which the counts
    at a position it yielded are found again, and the counts at the last one it yielded."""

    start: Counts
    max_line_bytes: int
    last: Counts | None = None


# Of each file (by absolute path), in this process: the counts of the checkpoint loaded last,
# and what its last few streams reached, newest last (Rule 2).
_loaded: dict[str, Counts] = {}
_streams: dict[str, list[_Reached]] = {}
# The file a stream was made of last: where `save_checkpoint` saves when not told.
_streamed_last: list[str | Path] = []


@dataclass(frozen=True)
class Known:
    """What this process had counted of one file at one instant (`known_counts`): a save in a
    thread then sees the counts as of the moment it was asked for, while streams move on."""

    # Each stream's (start, max_line_bytes, last), newest first.
    streams: tuple[tuple[Counts, int, Counts | None], ...]
    loaded: Counts | None  # the checkpoint loaded last

    def reached(self, offset: int) -> Counts | None:
        """The counts a stream (the newest) yielded or started at `offset`, else None."""
        for start, _, last in self.streams:
            for counts in (last, start):
                if counts is not None and counts[0] == offset:
                    return counts
        return None


def _key(filename: str | Path) -> str:
    return os.path.abspath(filename)


@dataclass(frozen=True)
class SavedCheckpoint:
    """Where to resume one file: unpacks as `offset, running_sum`; the rest are attributes."""

    offset: int = 0
    sum: int = 0
    lines: int = 0
    records: int = 0
    bad_records: int = 0
    input: str | None = None  # the file it is the state of; None without a checkpoint
    completed: bool = False
    updated_at: str | None = None
    checkpoint: Checkpoint | None = None  # the whole checkpoint, every file in it

    def __iter__(self) -> Iterator[int]:
        return iter((self.offset, self.sum))


def load_checkpoint(
    path: str | Path = "checkpoint.json", *, input: str | Path | None = None
) -> SavedCheckpoint:
    """Where `input` (the checkpoint's one file, when not given) was left; (0, 0) when nowhere.

    Raises CheckpointCorrupt for a checkpoint that cannot be trusted (left untouched),
    CheckpointOfSeveralFiles when `input` is needed to choose, and InputChanged when the file no
    longer holds what the checkpoint consumed of it.
    """
    checkpoint = CheckpointStore(Path(path)).load()
    if checkpoint is None:
        return SavedCheckpoint()
    state = _state_of(checkpoint, Path(path), input)
    if state is None:  # a file the checkpoint does not hold yet starts at 0
        return SavedCheckpoint(
            input=None if input is None else os.fsdecode(input), checkpoint=checkpoint
        )
    filename = state.path if input is None else input
    _check_unchanged(filename, state, Path(path))
    p = state.position
    _loaded[_key(filename)] = (p.offset, p.lines, p.records, p.bad_records)
    return SavedCheckpoint(
        p.offset,
        p.sum,
        p.lines,
        p.records,
        p.bad_records,
        state.path,
        checkpoint.completed,
        checkpoint.updated_at,
        checkpoint,
    )


def _state_of(checkpoint: Checkpoint, path: Path, input: str | Path | None) -> FileState | None:
    files = checkpoint.files
    if input is not None:
        return _entry_of(checkpoint, input)
    if checkpoint.gone == Position() and len(files) <= 1:
        return files[0] if files else None
    names = ", ".join(f.path for f in files[:3]) + (", ..." if len(files) > 3 else "")
    gone = " and of files now gone" if checkpoint.gone != Position() else ""
    raise CheckpointOfSeveralFiles(
        f"checkpoint {path} holds the state of {len(files)} files ({names}){gone}; "
        "name the one to resume: load_checkpoint(input=...)"
    )


def _entry_of(checkpoint: Checkpoint, input: str | Path) -> FileState | None:
    """`input`'s entry (Rule 3): the one of its path when that is the same file, else the one of
    its inode. Of one plain path, else the one of its path: another file there now, which the
    check of its bytes reports. Of a glob or list, that is another file's entry (rotated
    away), and `input` has none."""
    files = checkpoint.files
    inode, generation = _inode_of(input)

    def is_it(entry: FileState) -> bool:  # the same inode, not a later file that took its number
        return entry.inode == inode and same_generation(entry.generation, generation) is not False

    by_path = [f for f in files if _key(f.path) == _key(input)]
    same = [f for f in by_path if f.inode is None or is_it(f)]
    by_inode = [f for f in files if inode is not None and is_it(f)]
    described = checkpoint.input  # as `InputPatterns.describe` gives it
    of_a_plain_path = (
        len(files) == 1 and not GLOB_CHARACTERS & set(described) and ", " not in described
    )
    return next(iter(same or by_inode[:1] or (by_path if of_a_plain_path else [])), None)


def _inode_of(input: str | Path) -> tuple[int | None, int | None]:
    """The inode number of the file at `input`, and its generation; None where unknown."""
    try:
        fd, info = open_regular_file(input)
    except OSError:
        return None, None
    try:
        return info.st_ino, generation_of(fd)
    finally:
        os.close(fd)


def _check_unchanged(filename: str | Path, state: FileState, path: Path) -> None:
    """Raise InputChanged unless the file still starts with what the checkpoint consumed."""
    offset = state.position.offset
    try:
        fd, info = open_regular_file(filename)
    except FileNotFoundError:
        return  # nothing to resume wrongly: reading it will say it is missing
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        raise InputChanged(
            f"input {filename} is no longer a regular file; delete {path} to start over",
            "replaced",
        ) from None
    try:
        size = info.st_size
        known = size >= offset and state.identity is not None
        prefix = identify_input(fd, offset) if known else None
        look = Look(read_to=offset, consumed=state.identity, size=size, prefix=prefix)
        change = classify(look)
        went_on = (
            change is Change.GREW
            and counted_line_ends(fd, offset)
            and read_ending(fd, offset, DEFAULT_MAX_LINE_BYTES)[0] is Ending.WENT_ON
        )
    finally:
        os.close(fd)
    if change is Change.TRUNCATED or look.prefix_differs:
        raise InputChanged(
            f"input {filename} no longer holds the {offset} bytes checkpoint {path} consumed "
            f"of it; delete {path} to start over",
            change.value,
        )
    if went_on:
        raise InputChanged(
            f"input {filename} goes on past checkpoint {path}'s offset {offset} on the line "
            f"counted last (it had no newline when it was counted); delete {path} to start over",
            Change.REWRITTEN.value,
        )


def save_checkpoint(
    offset: int,
    running_sum: int,
    path: str | Path = "checkpoint.json",
    *,
    input: str | Path | None = None,
    records: int | None = None,
    bad_records: int | None = None,
    lines: int | None = None,
) -> None:
    """Save atomically and durably that `input` (the file streamed last, else numbers.txt) was
    consumed up to `offset`, summing to `running_sum`, with the counts this process's
    `number_stream` reached there (or those given).

    Raises LockHeld while a worker runs on the checkpoint, ValueError for an offset inside a
    line or past the end, or counts that cannot be.
    """
    input = saved_input(input)
    position = position_at(input, offset, running_sum, records, bad_records, lines)
    write_position(Path(path), input, position)


def saved_input(input: str | Path | None) -> str | Path:
    """The file a save is of: the one named, else the one streamed last, else numbers.txt."""
    return input if input is not None else next(iter(_streamed_last), "numbers.txt")


def known_counts(input: str | Path) -> Known:
    """What this process counted of `input` so far (cheap: no I/O), for `position_at`."""
    key = _key(input)
    streams = tuple((r.start, r.max_line_bytes, r.last) for r in reversed(_streams.get(key, [])))
    return Known(streams, _loaded.get(key))


def position_at(
    input: str | Path,
    offset: int,
    running_sum: int,
    records: int | None = None,
    bad_records: int | None = None,
    lines: int | None = None,
    *,
    known: Known | None = None,
) -> Position:
    """The position to save: the counts given, else those a stream of this process reached
    (`known`, taken earlier, or now). May read the file to count again."""
    offset, running_sum = _whole(offset, "offset"), _whole(running_sum, "running_sum")
    records, bad_records, lines = (
        None if count is None else _whole(count, name)
        for count, name in ((records, "records"), (bad_records, "bad_records"), (lines, "lines"))
    )
    counted = _counts_at(input, offset, known_counts(input) if known is None else known)
    records = counted[1] if records is None else records
    bad_records = counted[2] if bad_records is None else bad_records
    lines = max(counted[0], records + bad_records) if lines is None else lines
    if min(offset, records, bad_records) < 0 or not records + bad_records <= lines <= offset:
        raise ValueError(
            f"cannot save offset {offset} with {lines} lines, {records} records and "
            f"{bad_records} bad records: counts must be >= 0, and lines hold the records and "
            "fit in the bytes"
        )
    return Position(offset, lines, records, bad_records, running_sum)


def _counts_at(input: str | Path, offset: int, known: Known) -> tuple[int, int, int]:
    """(lines, records, bad_records) a stream of this process had counted at `offset` (the
    newest that reached it), or the loaded checkpoint's there; zeros where none reached."""
    reached = known.reached(offset)
    if reached is not None:
        return reached[1:]
    for start, max_line_bytes, last in known.streams:
        if last is not None and start[0] < offset < last[0]:
            return _count_again(input, start, max_line_bytes, offset)
    loaded = known.loaded
    return loaded[1:] if loaded is not None and loaded[0] == offset else (0, 0, 0)


def _count_again(
    input: str | Path, start: Counts, max_line_bytes: int, offset: int
) -> tuple[int, int, int]:
    """The counts at `offset` of a stream that started with `start`: its bytes counted again."""
    parser = LineParser(Position(offset=start[0]), max_line_bytes=max_line_bytes, stop_at_bad=False)
    for chunk in _chunks(input, start[0], offset):
        parser.feed(chunk)
    counted = parser.finish().position  # a last line without '\n' was yielded all the same
    return start[1] + counted.lines, start[2] + counted.records, start[3] + counted.bad_records


def _whole(value: object, name: str) -> int:
    """`value` as an int: any integer type (numpy's too), never a bool, a float or text."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    return operator.index(value)  # type: ignore[arg-type]


def write_position(path: Path, input: str | Path, position: Position) -> None:
    """Replace `input`'s entry in the checkpoint at `path` (blocking, atomic, durable)."""
    replaceable(path)  # /dev/null, a FIFO, a directory: refused before a lock is made beside it
    lock = WorkerLock(path)
    lock.acquire(purpose="save a checkpoint")
    try:
        fd, info = open_regular_file(input)
        try:
            offset = _require_line_edge(
                fd, input, position.offset, info.st_size, DEFAULT_MAX_LINE_BYTES
            )
            position = replace(position, offset=offset)  # a counted line's end taken with it
            identity = identify_input(fd, offset) if offset else None
            generation = generation_of(fd)
        finally:
            os.close(fd)
        store = CheckpointStore(path)
        existing = store.load()
        files: tuple[FileState, ...] = existing.files if existing is not None else ()
        entry = _entry_of(existing, input) if existing is not None else None
        state = FileState(
            os.fsdecode(input), info.st_ino, identity, position, generation=generation
        )
        if entry is not None and entry.inode == info.st_ino:
            # The same file: its name as the worker matched it (Rule 3), and what the worker
            # knows of it beside its position (closed, renamed out; its inode's generation).
            state = replace(
                entry,
                identity=identity,
                position=position,
                generation=entry.generation or generation,
            )
        files = (*(f for f in files if f is not entry), state)
        gone = existing.gone if existing is not None else Position()
        described = existing.input if existing is not None else state.path
        # Completed, as the worker says it: this file read to its end, and every other one too.
        others_done = len(files) == 1 or (existing is not None and existing.completed)
        completed = offset == info.st_size and others_done
        total = total_of([gone, *(f.position for f in files)])
        store.save(Checkpoint(total, described, None, completed, files=files, gone=gone))
    finally:
        lock.release()


def _require_line_edge(
    fd: int, filename: str | Path, offset: int, size: int, max_line_bytes: int
) -> int:
    """Where a line starts at or after `offset` (Rule 5): `offset` where a line starts (or the
    file ends); past the end of a line counted without its '\n' when that end has come since
    (or only what may end it, up to the file's end). ValueError otherwise."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0: {offset}")
    if offset > size:
        raise ValueError(f"offset {offset} is past the end of {filename} ({size} bytes)")
    if offset == size or not counted_line_ends(fd, offset):
        return offset
    ending, taken = read_ending(fd, offset, max_line_bytes)
    if ending is not Ending.WENT_ON:
        return offset + taken
    raise ValueError(
        f"offset {offset} is inside a line of {filename}: a stream starts, and a save is, "
        "where a line starts (0, or just after a '\\n')"
    )


def _line_limit(max_line_bytes: object) -> int:
    limit = _whole(max_line_bytes, "max_line_bytes")
    if not 1 <= limit <= MAX_LINE_BYTES:
        raise ValueError(f"max_line_bytes must be from 1 to {MAX_LINE_BYTES}: {limit}")
    return limit


def stream_start(
    filename: str | Path, offset: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> int:
    """Where a stream of `filename` from `offset` starts reading (blocking); ValueError for an
    offset inside a line or outside the file, OSError for a file that is not a regular one."""
    offset = _whole(offset, "offset")
    limit = _line_limit(max_line_bytes)
    fd, info = open_regular_file(filename)
    try:
        return _require_line_edge(fd, filename, offset, info.st_size, limit)
    finally:
        os.close(fd)


class Stream:
    """The heart of `number_stream`, without I/O: chunks in, (position, number) out, and the
    counts at each yielded position kept for `save_checkpoint`. `start` is where its reading
    starts (`stream_start`): past `offset` when a counted line's end is taken there."""

    def __init__(self, filename: str | Path, offset: int, start: int, max_line_bytes: int) -> None:
        max_line_bytes = _line_limit(max_line_bytes)
        self.key = _key(filename)
        known = known_counts(filename)
        loaded = known.loaded if known.loaded is not None and known.loaded[0] == offset else None
        counts = known.reached(offset) or loaded or (offset, 0, 0, 0)
        _, self.lines, self.records, self.bad_records = counts
        self.reached = _Reached((start, *counts[1:]), max_line_bytes)
        kept = _streams.setdefault(self.key, [])
        kept.append(self.reached)
        del kept[:-STREAMS_KEPT]
        _streamed_last[:] = [filename]
        self.parser = LineParser(
            Position(offset=start), max_line_bytes=max_line_bytes, stop_at_bad=False
        )

    def feed(self, chunk: bytes) -> Iterator[tuple[int, int]]:
        """The records that the next chunk of the file completes."""
        for region in self.parser.split(chunk):
            yield from self._records(region)

    def end(self) -> Iterator[tuple[int, int]]:
        """The file ended: its last line, without a '\\n', is a line all the same."""
        unfinished = self.parser.take_unfinished()
        if unfinished is not None:
            offset, line = unfinished
            yield from self._records(Region(line + b"\n", offset), added_newline=True)

    def _records(self, region: Region, *, added_newline: bool = False) -> Iterator[tuple[int, int]]:
        if region.parsed is not None:  # an over-long line, known bad without its bytes
            self.lines += region.parsed.lines
            self.bad_records += region.parsed.bad_records
            return
        offset = region.offset
        for length, value in line_values(region.data, self.parser.max_line_bytes):
            offset += length
            self.lines += 1
            if isinstance(value, int):
                self.records += 1
                end = offset - 1 if added_newline else offset
                self.reached.last = (end, self.lines, self.records, self.bad_records)
                yield end, value
            elif value is not None:
                self.bad_records += 1


def number_stream(
    filename: str | Path, offset: int = 0, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, int]]:
    """Yield (offset after the line, number) for each record from byte `offset` on.

    Blank lines and bad records are skipped (and counted), by the worker's input rules.
    """
    start = stream_start(filename, offset, max_line_bytes)
    stream = Stream(filename, offset, start, max_line_bytes)
    for chunk in _chunks(filename, start):
        yield from stream.feed(chunk)
    yield from stream.end()


def _chunks(filename: str | Path, start: int, stop: int | None = None) -> Iterator[bytes]:
    """The bytes of a regular file from `start` to `stop` (its end by default), in chunks."""
    fd, _ = open_regular_file(filename)
    with open(fd, "rb", buffering=0) as handle:
        position = handle.seek(start)
        while stop is None or position < stop:
            wanted = (
                STREAM_CHUNK_BYTES if stop is None else min(STREAM_CHUNK_BYTES, stop - position)
            )
            chunk = handle.read(wanted)
            if not chunk:
                return
            position += len(chunk)
            yield chunk
