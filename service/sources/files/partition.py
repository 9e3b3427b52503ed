"""One file of the input: read from its position, parsed in threads, checked for changes.

Rule 1: the partition's state is its parser's `Position` and the identity of the consumed prefix
        (inode, hashes of the first and last KiB before the position), updated at every commit,
        so a snapshot is taken at once, in memory, without touching the file.
Rule 2: where the partition stands is one `FileLife` (`life.py`), moved only by events; what
        happened to its file is `classify` (`changes.py`) of the facts gathered here; a scan
        reaches it through `renamed_to` and `renamed_out`. A file found by a scan is opened by
        name and must still be the same (device, inode) when opened; a rename in between waits
        for the next scan to learn the new name.
Rule 3: a change below the position (shorter, rewritten, or for a plain path replaced or deleted)
        is `input_changed`: `fail` raises; `restart` reads the file again from 0, which takes its
        contribution out of the totals.
Rule 4: at most `max_open_files` partitions hold a file open; the others wait for a slot, and a
        followed file that is caught up gives its slot up while others wait (reopened by name
        later, and only if it is still the same (device, inode)). At most `READS_AT_ONCE` chunks
        are in memory at once (read, read ahead, or being parsed), so memory stays bounded.
Rule 5: the bytes come from an aiofiles async generator of chunks (`read_chunks`) on the
        partition's own descriptor, consumed with `async for`, which reads the next chunk ahead
        while this one is parsed. A chunk is cut into pieces that the event loop's thread and a
        helper thread share out as each is free. A change of position (restart, close) closes
        the generator, which drops what it read ahead. It reads to the size last seen; an
        fstat after it tells whether the file grew meanwhile, and a new generator reads that.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

import anyio
import anyio.lowlevel

from service.core.decimal_text import abandon_when
from service.core.names import shown
from service.core.parsing import (
    MIN_PIECE_BYTES,
    BadRecord,
    DetailBudget,
    LineParser,
    Parsed,
    Region,
    RegionResult,
)
from service.core.position import Position
from service.errors import InputChanged, InputUnreadable
from service.lifecycle.partition import Gauge, ReadStatus, Step
from service.settings import Settings
from service.sources.files.changes import Change, Look, classify
from service.sources.files.life import LOOK_FIRST, NOT_OPEN, Action, FileLife, State
from service.sources.files.line_end import Ending, counted_line_ends, read_ending
from service.sources.files.reading import Chunk, ChunkBuffers, read_chunks
from service.sources.files.scan import FileKey, Match
from service.storage.checkpoint import (
    FileState,
    InputIdentity,
    generation_of,
    identify_input,
    same_generation,
)
from service.telemetry.logs import Logger

__all__ = [
    "CHUNK_BYTES",
    "READS_AT_ONCE",
    "FilePartition",
    "FileSlots",
    "Shared",
    "say_input_changed",
]

# One buffer of the pool (regions are views of it). Each chunk costs a few thread wake-ups,
# slow on a virtual machine: 8 MiB reads 1 GB about 7% faster than 6 MiB, for 4 MB of RSS
# (the two buffers are most of what a run adds to the interpreter's own memory).
CHUNK_BYTES = 8 * 1024 * 1024
READS_AT_ONCE = 2  # chunks in memory at once, over all files: one parsed while the next is read
PARSE_THREADS = 2  # helpers parsing a chunk that holds a line of millions of digits
# Cut into for threads when a line is far longer than most. A line of two pieces (1 MiB) is the
# longest parsed on the loop's thread: a number that long takes about 0.6 s to convert.
PIECES_PER_CHUNK = 16
_LONGEST_PARSED_ON_THE_LOOP = 2 * CHUNK_BYTES // PIECES_PER_CHUNK  # bytes of one line
_PACED_BATCHES_PER_SECOND = 10
_SMALLEST_READ = 64 * 1024


def say_input_changed(
    log: Logger, settings: Settings, label: str, reason: str, message: str
) -> None:
    """`input_changed` for the file shown as `label`; InputChanged under `fail` (the caller
    reads it again from 0 under `restart`)."""
    action = settings.on_input_change
    # A warning either way: under "fail" the one error line is the fatal_error that follows.
    log.warning("input_changed", path=label, reason=reason, action=action, message=message)
    if action == "fail":
        raise InputChanged(
            message + "; set on_input_change=restart to start over, or `reset`", reason
        )


class FileSlots:
    """The slots of open files (`max_open_files`), and how many files wait for one. Counted
    here: the limiter's own `statistics()` copies every holder, a cost at each look at a file
    that grows with the files open, quadratic in all with thousands of them."""

    def __init__(self, total: int) -> None:
        self._limiter = anyio.CapacityLimiter(total)
        self.waiting = 0

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        try:
            self._limiter.acquire_on_behalf_of_nowait(borrower)
            return
        except anyio.WouldBlock:
            pass
        self.waiting += 1
        try:
            await self._limiter.acquire_on_behalf_of(borrower)
        finally:
            self.waiting -= 1

    def release_on_behalf_of(self, borrower: object) -> None:
        self._limiter.release_on_behalf_of(borrower)


@dataclass(frozen=True)
class Shared:
    """What every file partition of a source shares: the slots of open files, the reading
    buffers, and the run's budget of bad records shown in detail."""

    slots: FileSlots
    reading: ChunkBuffers
    details: DetailBudget


class FilePartition:
    """Reads one file; the lifecycle asks `next_batch` and the source renames or retires it."""

    def __init__(
        self,
        path: str,
        settings: Settings,
        log: Logger,
        shared: Shared,
        *,
        resume: FileState | None = None,
        key: FileKey | None = None,
        plain: bool = False,
    ) -> None:
        self.path = path
        self.settings = settings
        self.log = log
        self.slots = shared.slots
        self.reading = shared.reading
        self.details = shared.details
        self.key = key  # (device, inode) as this process sees it; None until known
        self.plain = plain
        # Known from the scan before the file is opened: a file still waiting for a slot at a
        # save is saved by its inode too, never by its name alone (which a rotation may give to
        # another file by the next start).
        self.inode = resume.inode if resume else (key[1] if key else None)
        self.generation = resume.generation if resume else None
        self.parser = self._new_parser(resume.position if resume else Position())
        self.identity: InputIdentity | None = resume.identity if resume else None
        self.fd: int | None = None  # open while it holds a slot
        self.opened_before = False  # in this process: its saved state is checked at the first
        # Its position ends a last line counted without its '\n' (line_end.py): growth is
        # checked to end that line first. Known at the first open, from the saved state.
        self.counted_line_open = False
        self._chunks: AsyncGenerator[Chunk, None] | None = None  # reading from the position on
        self.size: int | None = None
        self.changed_ns = 0  # its inode's change time when it was last looked at
        self.last_growth = anyio.current_time()
        # The furthest byte read: a held unfinished line read again (`_look_at_end`) is not
        # growth, which would keep a file renamed out open past `close_inactive`.
        self.read_end = self.parser.split_offset
        self.records_end = self.parser.split_offset  # where the last batch with records ended
        self.life = FileLife(by_name=plain)
        self._snapshot: FileState | None = None  # the last one handed out
        self.touched = True  # its state may differ from the last snapshot taken

    @property
    def label(self) -> str:
        return shown(self.path)

    @property
    def position(self) -> Position:
        return self.parser.position

    def gauges(self) -> list[Gauge]:
        position = self.parser.position
        size = max(position.offset, self.size or 0)
        named = self.life.state not in (State.RENAMED_OUT, State.DELETED)
        return [Gauge(self.label, position, size, size - position.offset, "bytes", named)]

    def snapshot(self, *, closed: bool = False) -> FileState:
        """The state now: the very same object while nothing changed, so a save can tell. A
        closed one says when it was closed."""
        state = self._snapshot
        if (
            state is None
            or state.position is not self.parser.position
            or state.identity is not self.identity
            or state.path is not self.path
            or state.inode != self.inode
            or state.generation != self.generation
            or state.closed != closed
        ):
            state = FileState(
                self.path,
                self.inode,
                self.identity,
                self.parser.position,
                closed,
                self.generation,
                time.time() if closed else None,
            )
            self._snapshot = state
        return state

    @property
    def state(self) -> State:
        return self.life.state

    @property
    def in_patterns(self) -> bool:
        """Whether the last scan found it under a pattern."""
        return self.life.state not in (State.RENAMED_OUT, State.PARKED_OUT)

    def renamed_to(self, path: str) -> None:
        """A scan found it under `path`: another name, or a name a pattern matches again."""
        self.life.on(Change.RENAMED)
        self.path = path
        self.touched = True

    def has_news(self, match: Match | None) -> bool:
        """Whether what a scan found of it (None: under no name) may mean there is something to
        read, or to look at: parked, it is opened again only then. A rewrite of the same size,
        or a new file given its inode number, changes its inode's change time."""
        return (
            match is None
            or match.size != self.size
            or match.changed_ns != self.changed_ns
            or self.life.state is not State.PARKED
        )

    def renamed_out(self) -> None:
        """A scan found it under no pattern: read on until idle, or closed if it is not open."""
        self.life.on(Change.RENAMED_OUT)
        self.touched = True

    def renamed_aside(self, path: str) -> None:
        """Not open, and under no pattern, but found as `path` in its directory: reopened by
        that name, then read on until idle, as an open file renamed out is."""
        self.life.on(Change.RENAMED_ASIDE)
        self.path = path
        self.touched = True

    def _new_parser(self, start: Position) -> LineParser:
        return LineParser(
            start,
            max_line_bytes=self.settings.max_line_bytes,
            stop_at_bad=self.settings.on_bad_record == "fail",
            details=self.details,
        )

    # --- opening ------------------------------------------------------------------------------

    async def open_now(self) -> None:
        """Open at start-up: for a plain path, a missing or odd file is an error at once."""
        await self._open()

    async def _open(self) -> bool:
        """Open the file by its name, taking a slot; False when it is not there to open now."""
        await self.slots.acquire_on_behalf_of(self)
        try:
            opened = await self._open_by_name()
        except BaseException:
            self.slots.release_on_behalf_of(self)
            raise
        if opened is None or self.life.state is State.CLOSED:  # CLOSED: renamed out meanwhile
            if opened is not None:
                os.close(opened[0])
            self.slots.release_on_behalf_of(self)  # the slot goes to a file that can use it
            if self.life.state is not State.CLOSED:
                # Following, the next scan gives its new name; not following, none will.
                self.life.on(Action.MISSED if self.settings.follow else Change.RENAMED_OUT)
            return False
        fd, info = opened
        generation = generation_of(fd)
        if not self.plain and same_generation(self.generation, generation) is False:
            # Its inode is another file's now: the one it followed (resumed from the saved
            # state, or parked) was deleted while it had no descriptor. It is folded like a
            # deleted file, and the next scan finds the new one as new.
            os.close(fd)
            self.slots.release_on_behalf_of(self)
            self.life.on(Change.DELETED)
            return False
        first, self.opened_before = not self.opened_before, True
        self.life.on(Action.OPENED)
        self.fd, self.key, self.inode = fd, (info.st_dev, info.st_ino), info.st_ino
        self.generation = generation
        self.size = info.st_size
        if first and self.position.offset > 0:
            await self._check_saved_state(info.st_size)
        await self._seek(self.parser.split_offset)
        return True

    async def _open_by_name(self) -> tuple[int, os.stat_result] | None:
        """The file its name leads to, opened, when it is the one to read; None when not."""
        waiting = self.life.state is State.WAITING_FOR_FILE
        try:
            info = os.stat(self.path)
            if not stat.S_ISREG(info.st_mode):  # checked before open: a FIFO's open would block
                if waiting:
                    return None  # following after a restart: wait until a file is there again
                raise InputUnreadable(f"input {self.label} is not a regular file")
            # Non-blocking, so a FIFO swapped in since the look cannot hang the loop (the fstat
            # below refuses it); in the loop's own thread, as a thread per file costs start-up.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:  # not there, or renamed away between the look and the open
            if waiting or not self.plain:
                return None
            raise InputUnreadable(
                f"input {self.label} not found; create it with `checkpoint-worker generate`"
            ) from None
        except OSError as error:
            raise InputUnreadable(f"cannot open input {self.label}: {error.strerror}") from None
        opened = os.fstat(fd)
        key = (opened.st_dev, opened.st_ino)
        if not stat.S_ISREG(opened.st_mode) or (self.key is not None and key != self.key):
            os.close(fd)  # renamed since the scan: the next scan gives its new name
            return None
        os.set_blocking(fd, True)
        return fd, opened

    async def _check_saved_state(self, size: int) -> None:
        """The file still holds what the saved state consumed of it, or it changed. A last line
        counted without its '\n' when a run ended has its end taken now, if it came."""
        offset = self.position.offset
        prefix = None
        if size >= offset:
            prefix = await anyio.to_thread.run_sync(identify_input, self._fd(), offset)
        look = Look(read_to=offset, consumed=self.identity, size=size, prefix=prefix)
        change = classify(look)
        if change is Change.TRUNCATED:
            message = f"is shorter ({size} bytes) than the checkpoint's offset {offset}"
            await self._changed(change, f"input {self.label} {message}")
        elif change is Change.REWRITTEN:
            message = f"differs from what the checkpoint consumed (first {offset} bytes)"
            await self._changed(change, f"input {self.label} {message}")
        else:
            self.counted_line_open = counted_line_ends(self._fd(), offset)
            await self._end_counted_line(look)

    async def _end_counted_line(self, look: Look) -> Change:
        """Growth past a last line counted without its '\n' (line_end.py): GREW when the line's
        end came (consumed with it) or there was no such line; following, UNCHANGED while its
        end has not come yet (nothing past it is read meanwhile), unless the file ends there
        (deleted, or renamed out and inactive: what came ends the line, as at the end of a run
        that is not following); REWRITTEN, handled as a change of the input, when the line
        went on."""
        offset = self.position.offset
        if not self.counted_line_open or look.size <= offset:
            return Change.GREW
        ending, taken = await anyio.to_thread.run_sync(
            read_ending, self._fd(), offset, self.settings.max_line_bytes
        )
        change = Change.GREW
        if ending is Ending.PENDING and self.settings.follow:
            change = classify(replace(look, read_to=look.size))
            if change not in (Change.DELETED, Change.INACTIVE):
                self.size = offset
                return Change.UNCHANGED
        if ending is Ending.WENT_ON:
            self.counted_line_open = False
            message = (
                f"input {self.label} goes on past the checkpoint's offset {offset}, on the line "
                "counted last (it had no newline when it was counted)"
            )
            await self._changed(Change.REWRITTEN, message)
            return Change.REWRITTEN
        # Ended by its '\n', or only blanks so far: the position still ends that line then.
        self.counted_line_open = ending is not Ending.CAME
        after = self.position.advance(consumed=taken, lines=0, records=0, bad_records=0, total=0)
        self.parser = self._new_parser(after)
        self._identify()
        await self._seek(after.offset)
        return change

    def _fd(self) -> int:
        assert self.fd is not None
        return self.fd

    async def _seek(self, offset: int) -> None:
        await self._stop_reading()
        os.lseek(self._fd(), offset, os.SEEK_SET)

    async def _changed(self, change: Change, message: str) -> None:
        """Log the change; raise under `fail`, read again from 0 under `restart`."""
        say_input_changed(self.log, self.settings, self.label, change.value, message)
        self.parser = self._new_parser(Position())
        self.read_end = self.records_end = 0  # what it holds now is new, read from 0
        self.identity = None
        if self.life.on(change) is State.WAITING_FOR_FILE:
            await self.close()  # the path names another file now, or none yet
            self.key = self.inode = None
        else:
            await self._seek(0)

    # --- reading ------------------------------------------------------------------------------

    async def next_batch(self) -> Step:
        # The state changes only in here (and by a rename the source makes, which says so):
        # a save snapshots only the partitions touched since the last one.
        self.touched = True
        try:
            return await self._next_batch()
        finally:
            self.touched = True

    async def _next_batch(self) -> Step:
        if self.life.state is State.CLOSED:  # renamed out before it was opened: kept, closed
            return self._step(Parsed(self.position), ReadStatus.CLOSED)
        if self.life.state in NOT_OPEN and not await self._open():
            return self._step(Parsed(self.position), _status_of(self.life.state, read_on=False))
        assert self.fd is not None
        if self.life.state in LOOK_FIRST:
            # At the end last time, or renamed out: check what changed before reading anything.
            progress = await self._look_at_end()
            if progress is not ReadStatus.READING:
                return self._step(Parsed(self.position), progress)
            if self.life.state in NOT_OPEN:  # closed by a restart: opened again at the next call
                return self._step(Parsed(self.position), ReadStatus.READING)
        # One chunk a call: the generator waits between calls, reading the next one ahead.
        async for chunk in self._reader():
            try:
                if chunk.error is not None:
                    raise InputUnreadable(f"cannot read input {self.label}: {chunk.error.strerror}")
                if self.parser.split_offset + chunk.size > self.read_end:
                    self.read_end = self.parser.split_offset + chunk.size
                    self.last_growth = anyio.current_time()
                regions = self.parser.split(chunk.data, PIECES_PER_CHUNK, size=chunk.size)
                batch = await self._parse_and_commit(regions)
                return self._step(batch, ReadStatus.READING)
            except anyio.get_cancelled_exc_class():
                # Helper threads may still be reading its bytes (abandoned by `_parse`): its
                # buffer leaves the pool, so no read fills it under them.
                chunk.buffer = None
                raise
            finally:
                self.reading.release(chunk)
        self._chunks = None  # read to the end as last seen: a new generator reads what comes
        if not self.settings.follow:
            self.size = os.fstat(self._fd()).st_size
            if self.size < self.parser.split_offset:  # cut below the position while it was read
                message = f"input {self.label} was truncated to {self.size} bytes"
                await self._changed(Change.TRUNCATED, message)
                return self._step(Parsed(self.position), ReadStatus.READING)
            if self.size > self.parser.split_offset:  # grown while it was read: read on
                grown = Look(
                    read_to=self.parser.split_offset, consumed=self.identity, size=self.size
                )
                await self._end_counted_line(grown)
                return self._step(Parsed(self.position), ReadStatus.READING)
            # In helper threads when it is a number of millions of digits: the loop beats on.
            batch = await self._parse_and_commit(self.parser.final_regions())
            self.life.on(Action.ENDED)
            return self._step(batch, ReadStatus.DONE)
        return self._step(Parsed(self.position), await self._look_at_end())

    def _step(self, batch: Parsed, progress: ReadStatus) -> Step:
        return Step(batch, progress)

    async def _look_at_end(self) -> ReadStatus:
        """At the end of what was there (following): grown, changed, gone, or caught up."""
        opened = os.fstat(self._fd())
        written = opened.st_ctime_ns != self.changed_ns  # or renamed, since the last look
        self.size, self.changed_ns = opened.st_size, opened.st_ctime_ns
        if written and self.parser.holds_a_line_start:
            # The unfinished line's start, held and not counted, may have been written over or
            # cut since: read it again from the position, never the copy of it.
            self.parser = self._new_parser(self.position)
            await self._seek(self.position.offset)
        at_name = self._key_at_name() if self.plain else None
        offset = self.position.offset
        prefix = None
        if offset > 0 and (opened.st_size > self.parser.split_offset or written):
            # Grown or written to: a rewrite of what was already consumed would read as growth,
            # or, written over in place with as many bytes, as no change at all.
            prefix = await anyio.to_thread.run_sync(identify_input, self._fd(), offset)
        look = Look(
            read_to=self.parser.split_offset,
            consumed=self.identity,
            size=opened.st_size,
            prefix=prefix,
            links=opened.st_nlink,
            by_name=self.plain,
            key=self.key,
            at_name=at_name,
            in_patterns=self.in_patterns,
            idle=anyio.current_time() - self.last_growth,
            close_inactive=self.settings.close_inactive,
        )
        change = classify(look)
        if look.is_input_change(change):
            details = {"path": self.label, "size": look.size, "offset": offset}
            await self._changed(change, _CHANGE_MESSAGES[change].format(**details))
            return ReadStatus.READING
        if change is Change.GREW:
            change = await self._end_counted_line(look)
            if change is Change.REWRITTEN:
                return ReadStatus.READING  # read again from 0, as for any change of the input
        self.life.on(change)
        waiting = self.slots.waiting > 0
        if change is Change.UNCHANGED and self.life.state is State.CAUGHT_UP and waiting:
            # Caught up, with files waiting for a slot: close, and queue again once a scan
            # brings news of it, so all take turns. (Not one renamed out: it keeps its slot
            # until it has not grown for `close_inactive`, as its writer may still append.)
            # Parked first: a scan while it closes finds it not open, to reopen by name.
            self.life.on(Action.PARKED)
            await self.close()
        return _status_of(self.life.state, read_on=change is Change.GREW)

    def _key_at_name(self) -> FileKey | None:
        """The (device, inode) of the file its name leads to now; None when none."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise InputUnreadable(f"cannot stat input {self.label}: {error.strerror}") from None
        return (current.st_dev, current.st_ino)

    def _read_size(self, offset: int) -> int:
        """How much to read at `offset`: 0 at the end of the file as last seen, unless that
        size was 0 (a look at the size, after, tells whether it grew)."""
        left = (self.size or 0) - offset
        if left <= 0:
            # A size of 0 may not mean empty (a /proc file): that is read to its end.
            return 0 if self.size else _SMALLEST_READ
        if self.settings.max_rate <= 0:
            # No bigger than what is left: a small file's read does not allocate a whole
            # chunk, which adds up over thousands of files, and the read that ends the file
            # is known as such (it ends the file's reading turn).
            return min(CHUNK_BYTES, max(_SMALLEST_READ, left))
        position = self.parser.position
        bytes_per_line = position.offset / position.lines if position.lines else 1.0
        batch = self.settings.max_rate * bytes_per_line / _PACED_BATCHES_PER_SECOND
        # At least a line's worth, no floor of a fixed size: at a rate of a few records a
        # second, one would let dozens through at once, then nothing for as many seconds.
        # Bytes with no record in them (blank or bad lines, a bad line of megabytes, one line
        # unfinished) have nothing to pace: each read is as long as those read since the
        # last record, so a stretch of any length takes a few dozen reads, not one per line.
        recordless = self.parser.split_offset - self.records_end
        return max(1, min(CHUNK_BYTES, math.ceil(max(batch, bytes_per_line, recordless))))

    def _reader(self) -> AsyncGenerator[Chunk, None]:
        """The chunks from the position on (a few at once, however many files)."""
        if self._chunks is None:
            start = self.parser.split_offset
            self._chunks = read_chunks(
                self._fd(), self.reading, lambda read: self._read_size(start + read)
            )
        return self._chunks

    async def _stop_reading(self) -> None:
        """Close the generator: what it read ahead is dropped and its slot freed."""
        if self._chunks is not None:
            chunks, self._chunks = self._chunks, None
            await chunks.aclose()

    async def _parse_and_commit(self, regions: list[Region]) -> Parsed:
        """Parse whole-line regions (reading ahead meanwhile); commit in order up to a failure."""
        records_before = self.parser.position.records
        results = await self._parse(regions)
        bad: list[BadRecord] = []
        failed = None
        for region, result in zip(regions, results, strict=True):
            batch = self.parser.commit(region, result)
            bad.extend(batch.bad)
            if batch.failed is not None:
                failed = batch.failed
                break
        # Right away, before the next await: a stop may come at any await, and a snapshot
        # must pair this position with the identity of this very prefix.
        self._identify()
        if self.parser.position.records > records_before:
            self.records_end = self.parser.position.offset
        return Parsed(self.parser.position, tuple(bad), failed)

    async def _parse(self, regions: list[Region]) -> list[RegionResult]:
        """Each region's result: on the loop's own thread, or in helper threads for a line of
        millions of digits."""
        if sum(len(r.data) for r in regions) < MIN_PIECE_BYTES:
            return [self.parser.parse(r) for r in regions]
        if max(r.longest_line for r in regions) <= _LONGEST_PARSED_ON_THE_LOOP:
            # The read ahead's task takes its turn first and hands its read to a thread, so the
            # next chunk is read on the other core while this thread parses this one (the kernel
            # releases the GIL; the loop waits one chunk's parse, under 2 ms). A helper thread
            # woken for each chunk gained nothing: it started once this thread had parsed it
            # all, and waiting for it cost a thread round trip a chunk.
            await anyio.lowlevel.checkpoint()
            return [self.parser.parse(r) for r in regions]
        # A line far longer than a piece may be a number of millions of digits, whose conversion
        # may take seconds: helper threads take every region, and the loop goes on beating.
        pending = iter(range(len(regions)))  # next() holds the GIL: each index goes to one thread
        results: list[RegionResult | None] = [None] * len(regions)
        abandoned = threading.Event()

        def share_out() -> None:
            with abandon_when(abandoned):  # a conversion stops at its next step, its GIL freed
                for index in pending:
                    if abandoned.is_set():
                        return
                    results[index] = self.parser.parse(regions[index])

        # A stop does not wait for a conversion that may take longer than `shutdown_timeout`:
        # the threads are abandoned (their results unused, nothing committed), and the final
        # checkpoint saves the position before these regions. A thread that ends after the event
        # loop closed reports to no one (SIGPIPE is ignored while `run` runs).
        parse = functools.partial(anyio.to_thread.run_sync, share_out, abandon_on_cancel=True)
        try:
            async with anyio.create_task_group() as threads:
                for _ in range(min(PARSE_THREADS, len(regions))):
                    threads.start_soon(parse)
        finally:
            abandoned.set()
        return [r for r in results if r is not None]

    def _identify(self) -> None:
        """The identity of the consumed prefix, from the page cache: it was just read."""
        offset = self.parser.position.offset
        if self.fd is None or offset == 0:
            self.identity = None if offset == 0 else self.identity
            return
        try:
            self.identity = identify_input(self._fd(), offset)
        except OSError as error:
            raise InputUnreadable(f"cannot read input {self.label}: {error.strerror}") from None

    # --- closing ------------------------------------------------------------------------------

    async def _close_handle(self) -> None:
        await self._stop_reading()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    async def close(self) -> None:
        """Close the file and give its slot back; where it stands is the state's to say."""
        if self.fd is not None:
            await self._close_handle()
            self.slots.release_on_behalf_of(self)


_CHANGE_MESSAGES = {  # of a change seen while following
    Change.TRUNCATED: "input {path} was truncated to {size} bytes",
    Change.REWRITTEN: "input {path} was rewritten: its first {offset} bytes are not the ones "
    "already consumed",
    Change.REPLACED: "input {path} was replaced by another file",
    Change.DELETED: "input {path} was deleted",
}


def _status_of(state: State, *, read_on: bool) -> ReadStatus:
    """What the lifecycle is told after a look: read on, wait `poll_interval`, wait for news
    (parked), or closed."""
    if state in (State.CLOSED, State.DELETED):
        return ReadStatus.CLOSED
    if state in (State.PARKED, State.PARKED_OUT):
        return ReadStatus.PARKED
    return ReadStatus.READING if read_on or state is State.OPEN else ReadStatus.CAUGHT_UP
