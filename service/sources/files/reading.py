"""A file's bytes as an async generator of chunks, read through aiofiles.

Rule 1: every byte is read with aiofiles from the descriptor the partition opened, never by name
        again: a file renamed or deleted since it was opened is still the file being read.
Rule 2: a chunk holds a reading slot from before its read until its consumer releases it (when
        its parse ends), so at most `ChunkBuffers.count` chunks exist over all files, the one
        read ahead included. A released slot goes straight to the read waiting longest, started
        in the same step: it is not left for a task that the next parse would hold up.
Rule 3: a chunk of at least `POOLED_SHARE` of a full one (the end of a big file included) is read
        into a buffer of the pool (`readinto`), allocated once and reused: a run does not
        allocate and free a chunk per read, which let the heap creep, nor fault in fresh pages
        for each file's end. A released chunk's bytes belong to the pool again: the consumer
        keeps no view of them.
Rule 4: while the consumer parses a full chunk, the next one is read ahead as a task of its own,
        as soon as a slot is free. Closing the generator waits for that read and frees its
        slot; a read is never abandoned to a thread that would still fill memory.
Rule 5: one file at a time reads full chunks: its generator holds the reading turn until its
        read of the end of the file as last seen starts, or until it has read `TURN_CHUNKS` in
        a row while another file waits. Files that all read at once pair up, both parsed while
        nothing is read, then both read while nothing is parsed; in turns, each read overlaps
        a parse, as with one file.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiofiles
import anyio

__all__ = ["Chunk", "ChunkBuffers", "read_chunks"]

TURN_CHUNKS = 16  # full chunks a file reads in a row while another waits for its turn
POOLED_SHARE = 4  # a read of a quarter of a full chunk or more uses a buffer of the pool


class Chunk:
    """Bytes read from the file (the first `size` of `data`), or why not; the pool's buffer
    they are in, if any."""

    def __init__(self) -> None:
        self.data: bytes | bytearray = b""
        self.size = 0
        self.error: OSError | None = None
        self.buffer: bytearray | None = None

    @property
    def filled(self) -> memoryview:
        """The bytes read, as a view: valid until the chunk is released."""
        return memoryview(self.data)[: self.size]


class ChunkBuffers:
    """The reading slots shared by every file, the reads waiting for one, and the buffers of
    full-size chunks."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size  # of a full chunk
        self.in_use = 0  # chunks that exist now, read or being read
        self._waiting: deque[_Read] = deque()  # reads without a slot yet, oldest first
        self._free: list[bytearray] = []  # allocated at first use, at most `count`
        self._turn = anyio.CapacityLimiter(1)  # held by the generator of the file reading now

    def read(self, file: Any, size: int) -> _Read:
        """A read of `size` bytes, started now if a slot is free, else as soon as one is."""
        if self.in_use < self.count and not self._waiting:
            self.in_use += 1
            return _Read(file, self, size, started=True)
        read = _Read(file, self, size, started=False)
        self._waiting.append(read)
        return read

    def withdraw(self, read: _Read) -> None:
        """A read that never got a slot is no longer wanted."""
        self._waiting.remove(read)

    def release(self, chunk: Chunk) -> None:
        """The chunk is done with: its slot and its buffer serve the next read."""
        if chunk.buffer is not None:
            self._free.append(chunk.buffer)
            chunk.buffer, chunk.data, chunk.size = None, b"", 0
        if self._waiting:
            self._waiting.popleft().start()  # the slot passes on
        else:
            self.in_use -= 1

    def lend(self, chunk: Chunk) -> bytearray:
        """A full-size buffer for the chunk, which holds a slot (so one is always there)."""
        chunk.buffer = self._free.pop() if self._free else bytearray(self.size)
        return chunk.buffer

    async def take_turn(self, reader: object) -> None:
        await self._turn.acquire_on_behalf_of(reader)

    def end_turn(self, reader: object) -> None:
        self._turn.release_on_behalf_of(reader)

    @property
    def turn_wanted(self) -> bool:
        return self._turn.statistics().tasks_waiting > 0


class _Read:
    """One chunk read by a task of its own once it holds a slot."""

    def __init__(self, file: Any, buffers: ChunkBuffers, size: int, *, started: bool) -> None:
        self.file = file
        self.buffers = buffers
        self.size = size
        self.chunk = Chunk()
        self.task: asyncio.Future[None] | None = None
        self.has_slot = asyncio.Event()
        if started:
            self.start()

    def start(self) -> None:
        self.has_slot.set()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        chunk, buffers = self.chunk, self.buffers
        try:
            if self.size < buffers.size // POOLED_SHARE:  # a small file, a paced read
                chunk.data = await self.file.read(self.size)
                chunk.size = len(chunk.data)
                return
            chunk.data = buffer = buffers.lend(chunk)
            into = buffer if self.size == len(buffer) else memoryview(buffer)[: self.size]
            chunk.size = await self.file.readinto(into)
        except OSError as error:  # kept for when the chunk is used
            chunk.error = error

    async def done(self) -> Chunk:
        """The chunk once read; a cancelled wait leaves the read as it is (see `discard`)."""
        await self.has_slot.wait()
        assert self.task is not None
        await asyncio.wait([self.task])
        self.task.result()
        return self.chunk

    async def discard(self) -> None:
        """No longer wanted: waits for a read under way (never abandoned) and frees its slot."""
        if self.task is None:
            self.buffers.withdraw(self)
            return
        with anyio.CancelScope(shield=True):
            await asyncio.wait([self.task])
        self.buffers.release(self.chunk)


async def read_chunks(
    fd: int, buffers: ChunkBuffers, size: Callable[[int], int]
) -> AsyncGenerator[Chunk, None]:
    """The chunks of the file from the descriptor's position to its end as it is now.

    `size(read)` is how much to read next, at most `buffers.size`, once `read` bytes were read
    from the start position: 0 when the caller knows nothing more is there, which spares a read
    that would find the end. The consumer releases each chunk (`buffers.release(chunk)`) once
    done with its bytes.
    """
    async with aiofiles.open(fd, "rb", buffering=0, closefd=False) as file:
        pending: _Read | None = None
        turn = _Turn(buffers)
        read = 0
        try:
            while True:
                if pending is None:
                    await turn.take()
                    pending = _next_read(file, buffers, turn, size(read))
                    if pending is None:  # at the end as last seen
                        return
                chunk = await pending.done()
                pending = None
                if not chunk.size and chunk.error is None:  # the end, as of now
                    buffers.release(chunk)
                    return
                read += chunk.size
                if turn.reads_on(chunk):  # ahead: started as soon as a slot is free
                    pending = _next_read(file, buffers, turn, size(read))
                yield chunk
        finally:
            turn.end()
            if pending is not None:
                await pending.discard()


def _next_read(file: Any, buffers: ChunkBuffers, turn: _Turn, size: int) -> _Read | None:
    """The read of the next `size` bytes; None when that is 0 (the end as last seen)."""
    turn.asking(size)
    return buffers.read(file, size) if size > 0 else None


class _Turn:
    """One generator's hold on the reading turn (rule 5)."""

    def __init__(self, buffers: ChunkBuffers) -> None:
        self.buffers = buffers
        self.held = False
        self.wanted = True  # the next read waits for the turn
        self.chunks = 0  # full chunks read in this turn

    async def take(self) -> None:
        if self.wanted and not self.held:
            await self.buffers.take_turn(self)
            self.held = True
            self.chunks = 0

    def asking(self, size: int) -> None:
        """A read of less than a full buffer is the end of the file as last seen, or a paced
        read: the turn ends as it starts, so the next file's first read overlaps its parse,
        and what follows it is read without waiting for a turn."""
        if size < self.buffers.size:
            self.wanted = False
            self.end()

    def reads_on(self, chunk: Chunk) -> bool:
        """Whether to read the next chunk ahead: after a full chunk read in the turn, unless
        `TURN_CHUNKS` of them were read while another file waits."""
        if chunk.size < self.buffers.size:  # shorter than a full chunk: the end, as of now
            self.wanted = False
            self.end()
            return False
        self.wanted = True
        if not self.held:  # grown while its end was read: the next read waits for the turn
            return False
        self.chunks += 1
        if self.chunks >= TURN_CHUNKS and self.buffers.turn_wanted:
            self.end()
            return False
        return True

    def end(self) -> None:
        if self.held:
            self.held = False
            self.buffers.end_turn(self)
