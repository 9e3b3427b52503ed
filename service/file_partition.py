"""One file of the input: read from its position, parsed in threads, checked for changes.

Rule 1: the partition's state is its parser's `Position` and the identity of the consumed prefix
        (inode, hashes of the first and last KiB before the position), updated at every commit,
        so a snapshot is taken at once, in memory, without touching the file.
Rule 2: a file found by a scan is opened by name and must still be the same (device, inode)
        when opened; a rename in between waits for the next scan to learn the new name.
Rule 3: a change below the position (shorter, rewritten, or for a plain path replaced or deleted)
        is `input_changed`: `fail` raises; `restart` reads the file again from 0, which takes its
        contribution out of the totals.
Rule 4: at most `max_open_files` partitions hold a file open; the others wait for a slot, and a
        followed file that is caught up gives its slot up while others wait (reopened by name
        later, and only if it is still the same (device, inode)). At most `READS_AT_ONCE` read
        and parse a chunk at once, so memory stays bounded.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from typing import Any

import aiofiles
import anyio
from aiofiles.threadpool.binary import AsyncBufferedReader

from .checkpoint import FileState, InputIdentity, identify_input
from .errors import InputChanged, InputUnreadable
from .logs import Logger
from .parsing import Batch, LineParser, Region, RegionResult
from .partition import Gauge, Progress, Step
from .patterns import FileKey
from .settings import Settings
from .state import Position

__all__ = ["CHUNK_BYTES", "READS_AT_ONCE", "FilePartition"]

CHUNK_BYTES = 1024 * 1024  # each chunk is held about three times over: peak RSS stays < 50 MB
READS_AT_ONCE = 4  # chunks being read or parsed at once, over all files: both cores stay busy
PARSE_THREADS = 2  # regions parsed at once: the kernel releases the GIL, so both cores work
_PARALLEL_MIN_BYTES = 65536
_PACED_BATCHES_PER_SECOND = 10


def _split_for_threads(region: Region, parts: int) -> list[Region]:
    """Cut a region of whole lines into up to `parts` regions of whole lines."""
    data = region.data
    if parts < 2 or len(data) < 2 * _PARALLEL_MIN_BYTES:
        return [region]
    pieces: list[Region] = []
    start = 0
    for part in range(1, parts):
        cut = data.find(b"\n", len(data) * part // parts)
        if cut < 0 or cut + 1 >= len(data):
            break
        pieces.append(Region(data[start : cut + 1], region.offset + start))
        start = cut + 1
    pieces.append(Region(data[start:], region.offset + start))
    return pieces


class FilePartition:
    """Reads one file; the lifecycle asks `next_batch` and the source renames or retires it."""

    def __init__(
        self,
        path: str,
        settings: Settings,
        log: Logger,
        slots: anyio.CapacityLimiter,
        reading: anyio.CapacityLimiter,
        *,
        resume: FileState | None = None,
        key: FileKey | None = None,
        plain: bool = False,
    ) -> None:
        self.path = path
        self.settings = settings
        self.log = log
        self.slots = slots
        self.reading = reading
        self.key = key  # (device, inode) as this process sees it; None until known
        self.plain = plain
        self.inode = resume.inode if resume else None
        self.resume = resume if resume and resume.position.offset > 0 else None
        self.parser = self._new_parser(resume.position if resume else Position())
        self.identity: InputIdentity | None = resume.identity if resume else None
        self.handle: AsyncBufferedReader | None = None
        self.holds_slot = False
        self.size: int | None = None
        self.renamed_out = False  # no pattern matches its name any more
        self.deleted = False
        self.last_growth = anyio.current_time()
        self.progress = Progress.READING
        self._reopen_when_present = False

    @property
    def label(self) -> str:
        return self.path

    @property
    def position(self) -> Position:
        return self.parser.position

    def gauges(self) -> list[Gauge]:
        position = self.parser.position
        size = max(position.offset, self.size or 0)
        return [Gauge(self.path, position, size, size - position.offset, "bytes")]

    def snapshot(self, *, closed: bool = False) -> FileState:
        return FileState(self.path, self.inode, self.identity, self.parser.position, closed)

    def _new_parser(self, start: Position) -> LineParser:
        return LineParser(
            start,
            max_line_bytes=self.settings.max_line_bytes,
            stop_at_bad=self.settings.on_bad_record == "fail",
        )

    # --- opening ------------------------------------------------------------------------------

    async def open_now(self) -> None:
        """Open at start-up: for a plain path, a missing or odd file is an error at once."""
        await self._open()

    async def _open(self) -> bool:
        """Open the file (taking a slot); False when it is not there to open right now."""
        if not self.holds_slot:
            await self.slots.acquire_on_behalf_of(self)
            self.holds_slot = True
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            if self._reopen_when_present or not self.plain:
                return False
            raise InputUnreadable(
                f"input {self.path} not found; create it with `checkpoint-worker generate`"
            ) from None
        except OSError as error:
            raise InputUnreadable(f"cannot open input {self.path}: {error.strerror}") from None
        if not stat.S_ISREG(info.st_mode):  # checked before open: a FIFO's open would block
            if self._reopen_when_present:
                return False  # following after a restart: wait until a file is there again
            raise InputUnreadable(f"input {self.path} is not a regular file")
        try:
            handle = await aiofiles.open(self.path, "rb")
        except OSError as error:
            raise InputUnreadable(f"cannot open input {self.path}: {error.strerror}") from None
        opened = os.fstat(handle.fileno())
        key = (opened.st_dev, opened.st_ino)
        if not stat.S_ISREG(opened.st_mode) or (self.key is not None and key != self.key):
            await handle.close()  # renamed since the scan: the next scan gives its new name
            return False
        self.handle, self.key, self.inode = handle, key, opened.st_ino
        self.size = opened.st_size
        self._reopen_when_present = False
        if self.resume is not None:
            await self._verify_resume(self.resume, opened.st_size)
            self.resume = None
        await handle.seek(self.parser.split_offset)
        return True

    async def _verify_resume(self, resume: FileState, size: int) -> None:
        """The file still holds what the checkpoint consumed of it, or it changed."""
        offset = resume.position.offset
        if size < offset:
            await self._changed(
                f"input {self.path} is shorter ({size} bytes) than the checkpoint's offset "
                f"{offset}",
                "truncated",
            )
            return
        identity = await anyio.to_thread.run_sync(identify_input, self._fd(), offset)
        if identity != resume.identity:
            await self._changed(
                f"input {self.path} differs from what the checkpoint consumed "
                f"(first {offset} bytes)",
                "content_changed",
            )

    def _fd(self) -> int:
        assert self.handle is not None
        return self.handle.fileno()

    async def _changed(self, message: str, reason: str) -> None:
        """Log the change; raise under `fail`, read again from 0 under `restart`."""
        action = self.settings.on_input_change
        # A warning either way: under "fail" the one error line is the fatal_error that follows.
        self.log.warning(
            "input_changed", path=self.path, reason=reason, action=action, message=message
        )
        if action == "fail":
            raise InputChanged(
                message + "; set on_input_change=restart to start over, or `reset`", reason
            )
        self.parser = self._new_parser(Position())
        self.identity = None
        self.resume = None
        if self.plain and reason in ("deleted", "replaced"):
            await self._close_handle()  # the path names another file now, or none yet
            self._reopen_when_present = True
            self.key = self.inode = None
        elif self.handle is not None:
            await self.handle.seek(0)

    # --- reading ------------------------------------------------------------------------------

    async def next_batch(self) -> Step:
        if self.handle is None:
            if self.renamed_out or self.deleted:
                return self._step(Batch(self.position), Progress.CLOSED)  # never opened
            if not await self._open():
                await self.close()  # the slot goes to a file that can use it
                if not self.settings.follow:  # renamed or gone since the scan: kept, closed
                    self.renamed_out = True
                    return self._step(Batch(self.position), Progress.CLOSED)
                return self._step(Batch(self.position), Progress.CAUGHT_UP)
        assert self.handle is not None
        if self.progress is Progress.CAUGHT_UP:
            # At the end last time: check what changed before reading anything new.
            progress = await self._look_at_end()
            if progress is not Progress.READING:
                return self._step(Batch(self.position), progress)
            if self.handle is None:  # closed by a restart: opened again at the next call
                return self._step(Batch(self.position), Progress.READING)
        async with self.reading:  # a few chunks in memory at once, however many files
            try:
                chunk = await self.handle.read(self._read_size())
            except OSError as error:
                raise InputUnreadable(f"cannot read input {self.path}: {error.strerror}") from None
            if chunk:
                self.last_growth = anyio.current_time()
                regions = self.parser.split(chunk)
                del chunk  # its whole lines are in the regions: free it before they are parsed
                batch = await self._parse_and_commit(regions)
                return self._step(batch, Progress.READING)
        if not self.settings.follow:
            batch = self.parser.finish()
            self._identify()
            self.size = os.fstat(self._fd()).st_size
            return self._step(batch, Progress.DONE)
        return self._step(Batch(self.position), await self._look_at_end())

    async def _park_if_others_wait(self) -> None:
        """Caught up, with files waiting for a slot: close and queue again, so all take turns."""
        if self.handle is not None and self.slots.statistics().tasks_waiting > 0:
            await self.close()

    def _step(self, batch: Batch, progress: Progress) -> Step:
        self.progress = progress
        return Step(batch, progress)

    async def _look_at_end(self) -> Progress:
        """At the end of what was there (following): grown, changed, gone, or caught up."""
        opened = os.fstat(self._fd())
        self.size = opened.st_size
        if opened.st_size < self.parser.split_offset:
            await self._changed(
                f"input {self.path} was truncated to {opened.st_size} bytes", "truncated"
            )
            return Progress.READING
        if self.plain:
            replaced = await self._plain_path_replaced(opened)
            if replaced is not None:
                await self._changed(*replaced)
                return Progress.READING
        if opened.st_size > self.parser.split_offset:
            if await self._consumed_prefix_rewritten():
                await self._changed(
                    f"input {self.path} was rewritten: its first {self.position.offset} bytes "
                    "are not the ones already consumed",
                    "content_changed",
                )
            return Progress.READING
        if not self.plain and opened.st_nlink == 0:
            self.deleted = True  # finished through the open descriptor: nothing more comes
            return Progress.CLOSED
        inactive = anyio.current_time() - self.last_growth >= self.settings.close_inactive
        if self.renamed_out and inactive:
            return Progress.CLOSED
        await self._park_if_others_wait()
        return Progress.CAUGHT_UP

    async def _plain_path_replaced(self, opened: os.stat_result) -> tuple[str, str] | None:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return f"input {self.path} was deleted", "deleted"
        except OSError as error:
            raise InputUnreadable(f"cannot stat input {self.path}: {error.strerror}") from None
        if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            return f"input {self.path} was replaced by another file", "replaced"
        return None

    async def _consumed_prefix_rewritten(self) -> bool:
        """Growth is fine; a rewrite of what was already consumed (same file) is not."""
        offset = self.position.offset
        if offset == 0:
            return False
        now = await anyio.to_thread.run_sync(identify_input, self._fd(), offset)
        return now != self.identity

    def _read_size(self) -> int:
        if self.settings.max_rate <= 0:
            return CHUNK_BYTES
        position = self.parser.position
        bytes_per_record = position.offset / position.lines if position.lines else 8.0
        batch = self.settings.max_rate * bytes_per_record / _PACED_BATCHES_PER_SECOND
        return max(64, min(CHUNK_BYTES, int(batch)))

    async def _parse_and_commit(self, regions: list[Region]) -> Batch:
        """Parse whole-line regions (in threads when large), commit in order, stop at a failure."""
        bad: list[Any] = []
        for region in regions:
            pieces = _split_for_threads(region, PARSE_THREADS)
            results = await self._parse(pieces)
            for piece, result in zip(pieces, results, strict=True):
                batch = self.parser.commit(piece, result)
                # Right away, before the next await: a stop may come at any await, and a
                # snapshot must pair this position with the identity of this very prefix.
                self._identify()
                bad.extend(batch.bad)
                if batch.failed is not None:
                    return replace(batch, bad=tuple(bad))
        return Batch(self.parser.position, tuple(bad))

    async def _parse(self, regions: list[Region]) -> list[RegionResult]:
        if len(regions) == 1 and (regions[0].parsed or len(regions[0].data) < _PARALLEL_MIN_BYTES):
            return [self.parser.parse(regions[0])]
        results: list[RegionResult | None] = [None] * len(regions)

        async def parse_one(index: int) -> None:
            # Parsing is pure: if shutdown cancels us, the thread's result is simply dropped.
            # Not abandoned, though: a thread that finishes while the event loop closes writes
            # to its half-closed self-pipe, and SIGPIPE (default for the CLI) kills the process
            # after the final checkpoint with 141 instead of 0. A piece parses in milliseconds.
            results[index] = await anyio.to_thread.run_sync(self.parser.parse, regions[index])

        async with anyio.create_task_group() as parsers:
            for index in range(len(regions)):
                parsers.start_soon(parse_one, index)
        return [r for r in results if r is not None]

    def _identify(self) -> None:
        """The identity of the consumed prefix, from the page cache: it was just read."""
        offset = self.parser.position.offset
        if self.handle is None or offset == 0:
            self.identity = None if offset == 0 else self.identity
            return
        try:
            self.identity = identify_input(self._fd(), offset)
        except OSError as error:
            raise InputUnreadable(f"cannot read input {self.path}: {error.strerror}") from None

    # --- closing ------------------------------------------------------------------------------

    async def _close_handle(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            with anyio.CancelScope(shield=True):
                await handle.close()

    async def close(self) -> None:
        await self._close_handle()
        if self.holds_slot:
            self.holds_slot = False
            self.slots.release_on_behalf_of(self)
