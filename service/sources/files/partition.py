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
        later, and only if it is still the same (device, inode)). At most `READS_AT_ONCE` chunks
        are in memory at once (read, read ahead, or being parsed), so memory stays bounded.
Rule 5: a chunk is cut into pieces that the parsing threads share out as each is free; the
        first thread reads the next chunk meanwhile, when a reading slot is free right then.
        A change of position (restart, close) drops what was read ahead.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import anyio

from service.core.parsing import MIN_PIECE_BYTES, BadRecord, Batch, LineParser, Region, RegionResult
from service.core.position import Position
from service.errors import InputChanged, InputUnreadable
from service.lifecycle.partition import Gauge, Progress, Step
from service.settings import Settings
from service.sources.files.scan import FileKey
from service.storage.checkpoint import FileState, InputIdentity, identify_input
from service.telemetry.logs import Logger

__all__ = ["CHUNK_BYTES", "READS_AT_ONCE", "FilePartition"]

CHUNK_BYTES = 4 * 1024 * 1024  # held once (regions are views of it): peak RSS stays < 50 MB
READS_AT_ONCE = 2  # chunks in memory at once, over all files: one parsed while the next is read
PARSE_THREADS = 2  # regions parsed at once: the kernel releases the GIL, so both cores work
PIECES_PER_CHUNK = 8  # small enough that the threads end a chunk together, the read included
_PACED_BATCHES_PER_SECOND = 10


@dataclass(eq=False)
class _Chunk:
    """Bytes read from the file, or why not; the chunk itself holds its reading slot."""

    data: bytes = b""
    error: OSError | None = None

    def read(self, fd: int, size: int) -> None:
        """Read from `fd` (blocking); an error is kept for when the chunk is used."""
        try:
            self.data = os.read(fd, size)
        except OSError as error:
            self.error = error


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
        self.fd: int | None = None
        self._ahead: _Chunk | None = None  # the next chunk, read while the last one was parsed
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
            if not stat.S_ISREG(info.st_mode):  # checked before open: a FIFO's open would block
                if self._reopen_when_present:
                    return False  # following after a restart: wait until a file is there again
                raise InputUnreadable(f"input {self.path} is not a regular file")
            fd = await anyio.to_thread.run_sync(os.open, self.path, os.O_RDONLY)
        except FileNotFoundError:  # not there, or renamed away between the look and the open
            if self._reopen_when_present or not self.plain:
                return False
            raise InputUnreadable(
                f"input {self.path} not found; create it with `checkpoint-worker generate`"
            ) from None
        except OSError as error:
            raise InputUnreadable(f"cannot open input {self.path}: {error.strerror}") from None
        opened = os.fstat(fd)
        key = (opened.st_dev, opened.st_ino)
        if not stat.S_ISREG(opened.st_mode) or (self.key is not None and key != self.key):
            os.close(fd)  # renamed since the scan: the next scan gives its new name
            return False
        self.fd, self.key, self.inode = fd, key, opened.st_ino
        self.size = opened.st_size
        self._reopen_when_present = False
        if self.resume is not None:
            await self._verify_resume(self.resume, opened.st_size)
            self.resume = None
        self._seek(self.parser.split_offset)
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
        assert self.fd is not None
        return self.fd

    def _seek(self, offset: int) -> None:
        self._drop_read_ahead()
        os.lseek(self._fd(), offset, os.SEEK_SET)

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
        elif self.fd is not None:
            self._seek(0)

    # --- reading ------------------------------------------------------------------------------

    async def next_batch(self) -> Step:
        if self.fd is None:
            if self.renamed_out or self.deleted:
                return self._step(Batch(self.position), Progress.CLOSED)  # never opened
            if not await self._open():
                await self.close()  # the slot goes to a file that can use it
                if not self.settings.follow:  # renamed or gone since the scan: kept, closed
                    self.renamed_out = True
                    return self._step(Batch(self.position), Progress.CLOSED)
                return self._step(Batch(self.position), Progress.CAUGHT_UP)
        assert self.fd is not None
        if self.progress is Progress.CAUGHT_UP:
            # At the end last time: check what changed before reading anything new.
            progress = await self._look_at_end()
            if progress is not Progress.READING:
                return self._step(Batch(self.position), progress)
            if self.fd is None:  # closed by a restart: opened again at the next call
                return self._step(Batch(self.position), Progress.READING)
        chunk = await self._next_chunk()
        try:
            if chunk.error is not None:
                raise InputUnreadable(f"cannot read input {self.path}: {chunk.error.strerror}")
            if chunk.data:
                self.last_growth = anyio.current_time()
                regions = self.parser.split(chunk.data, PIECES_PER_CHUNK)
                batch = await self._parse_and_commit(regions)
                return self._step(batch, Progress.READING)
        finally:
            self.reading.release_on_behalf_of(chunk)
        if not self.settings.follow:
            batch = self.parser.finish()
            self._identify()
            self.size = os.fstat(self._fd()).st_size
            return self._step(batch, Progress.DONE)
        return self._step(Batch(self.position), await self._look_at_end())

    async def _park_if_others_wait(self) -> None:
        """Caught up, with files waiting for a slot: close and queue again, so all take turns."""
        if self.fd is not None and self.slots.statistics().tasks_waiting > 0:
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

    async def _next_chunk(self) -> _Chunk:
        """The next chunk, holding a reading slot: the one read ahead, or one read now."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            return ahead
        chunk = _Chunk()
        await self.reading.acquire_on_behalf_of(chunk)  # a few chunks at once, however many files
        try:
            await anyio.to_thread.run_sync(chunk.read, self._fd(), self._read_size())
        except BaseException:
            self.reading.release_on_behalf_of(chunk)
            raise
        return chunk

    def _drop_read_ahead(self) -> None:
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            self.reading.release_on_behalf_of(ahead)

    async def _parse_and_commit(self, regions: list[Region]) -> Batch:
        """Parse whole-line regions (reading ahead meanwhile); commit in order up to a failure."""
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
        return Batch(self.parser.position, tuple(bad), failed)

    async def _parse(self, regions: list[Region]) -> list[RegionResult]:
        """Each region's result: small ones here, large ones in threads that read ahead too."""
        if sum(len(r.data) for r in regions) < MIN_PIECE_BYTES:
            return [self.parser.parse(r) for r in regions]
        ahead = self._reserve_read_ahead()
        to_read = iter(() if ahead is None else (ahead,))
        pending = iter(range(len(regions)))  # next() holds the GIL: each index goes to one thread
        results: list[RegionResult | None] = [None] * len(regions)
        fd, size = self._fd(), self._read_size()

        def share_out() -> None:
            for chunk in to_read:  # the first thread reads the next chunk while others parse
                chunk.read(fd, size)
            for index in pending:
                results[index] = self.parser.parse(regions[index])

        try:
            async with anyio.create_task_group() as threads:
                for _ in range(min(PARSE_THREADS, len(regions))):
                    # Not abandoned if shutdown cancels us: a thread that finishes while the
                    # event loop closes writes to its half-closed self-pipe, and SIGPIPE (default
                    # for the CLI) kills the process after the final checkpoint with 141, not 0.
                    threads.start_soon(anyio.to_thread.run_sync, share_out)
        finally:
            if ahead is not None:
                self._keep_read_ahead(ahead)
        return [r for r in results if r is not None]

    def _reserve_read_ahead(self) -> _Chunk | None:
        """A chunk to read ahead into, holding a reading slot; None when none is free now."""
        chunk = _Chunk()
        try:
            self.reading.acquire_on_behalf_of_nowait(chunk)
        except anyio.WouldBlock:
            return None
        return chunk

    def _keep_read_ahead(self, ahead: _Chunk) -> None:
        if ahead.data or ahead.error is not None:
            self._ahead = ahead
        else:
            self.reading.release_on_behalf_of(ahead)  # at the end, or never read: look again

    def _identify(self) -> None:
        """The identity of the consumed prefix, from the page cache: it was just read."""
        offset = self.parser.position.offset
        if self.fd is None or offset == 0:
            self.identity = None if offset == 0 else self.identity
            return
        try:
            self.identity = identify_input(self._fd(), offset)
        except OSError as error:
            raise InputUnreadable(f"cannot read input {self.path}: {error.strerror}") from None

    # --- closing ------------------------------------------------------------------------------

    async def _close_handle(self) -> None:
        self._drop_read_ahead()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    async def close(self) -> None:
        await self._close_handle()
        if self.holds_slot:
            self.holds_slot = False
            self.slots.release_on_behalf_of(self)
