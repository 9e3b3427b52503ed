"""A file's bytes as an async generator of chunks, read through aiofiles.

Rule 1: every byte is read with aiofiles from the descriptor the partition opened, never by name
        again: a file renamed or deleted since it was opened is still the file being read.
Rule 2: a chunk holds a reading slot from before its read until its consumer releases it (when
        its parse ends), so at most `ChunkBuffers.count` chunks exist over all files, the one
        read ahead included.
Rule 3: a full-size chunk is read into a buffer of the pool (`readinto`), allocated once and
        reused: a run does not allocate and free a chunk per read, which let the heap creep.
        A released chunk's bytes belong to the pool again: the consumer keeps no view of them.
Rule 4: while the consumer parses a full chunk, the next one is read ahead as a task of its own
        if a slot is free right then. Closing the generator waits for that read and frees its
        slot; a read is never abandoned to a thread that would still fill memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import aiofiles
import anyio

__all__ = ["Chunk", "ChunkBuffers", "read_chunks"]


@dataclass(eq=False)
class Chunk:
    """Bytes read from the file, or why not; the chunk itself holds its reading slot, and the
    pool's buffer its bytes are in, if any."""

    data: bytes | bytearray = b""
    error: OSError | None = None
    buffer: bytearray | None = None


class ChunkBuffers:
    """The reading slots shared by every file, and the buffers of full-size chunks."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size  # of a full chunk
        self._slots = anyio.CapacityLimiter(count)
        self._free: list[bytearray] = []  # allocated at first use, at most `count`

    @property
    def in_use(self) -> int:
        """Chunks that exist now, read or being read."""
        return int(self._slots.borrowed_tokens)

    async def acquire(self, chunk: Chunk) -> None:
        await self._slots.acquire_on_behalf_of(chunk)

    def acquire_nowait(self, chunk: Chunk) -> None:
        """Raises anyio.WouldBlock when every slot is taken."""
        self._slots.acquire_on_behalf_of_nowait(chunk)

    def release(self, chunk: Chunk) -> None:
        """The chunk is done with: its slot and its buffer serve the next read."""
        if chunk.buffer is not None:
            self._free.append(chunk.buffer)
            chunk.buffer, chunk.data = None, b""
        self._slots.release_on_behalf_of(chunk)

    def lend(self, chunk: Chunk) -> bytearray:
        """A full-size buffer for the chunk, which holds a slot (so one is always there)."""
        chunk.buffer = self._free.pop() if self._free else bytearray(self.size)
        return chunk.buffer


class _Read:
    """One chunk being read by a task of its own, holding its slot."""

    def __init__(self, file: Any, buffers: ChunkBuffers, chunk: Chunk, size: int) -> None:
        self.chunk = chunk
        self.size = size
        self.task = asyncio.ensure_future(self._read(file, buffers))

    async def _read(self, file: Any, buffers: ChunkBuffers) -> None:
        chunk = self.chunk
        try:
            if self.size != buffers.size:  # the end of a file, a paced read: small, or once
                chunk.data = await file.read(self.size)
                return
            buffer = buffers.lend(chunk)
            filled = await file.readinto(buffer)
            chunk.data = buffer if filled == len(buffer) else bytes(memoryview(buffer)[:filled])
        except OSError as error:  # kept for when the chunk is used
            chunk.error = error

    async def done(self) -> Chunk:
        """The chunk once read; a cancelled wait leaves the read running (see `discard`)."""
        await asyncio.wait([self.task])
        self.task.result()
        return self.chunk

    async def discard(self, buffers: ChunkBuffers) -> None:
        with anyio.CancelScope(shield=True):
            await asyncio.wait([self.task])
        buffers.release(self.chunk)


async def read_chunks(
    fd: int, buffers: ChunkBuffers, size: Callable[[], int]
) -> AsyncGenerator[Chunk, None]:
    """The chunks of the file from the descriptor's position to its end as it is now.

    `size()` is how much to read next, at most `buffers.size`. The consumer releases each
    chunk (`buffers.release(chunk)`) once done with its bytes.
    """
    async with aiofiles.open(fd, "rb", buffering=0, closefd=False) as file:
        pending: _Read | None = None
        try:
            while True:
                if pending is None:
                    chunk = Chunk()
                    await buffers.acquire(chunk)
                    pending = _Read(file, buffers, chunk, size())
                chunk = await pending.done()
                full = len(chunk.data) == pending.size
                pending = None
                if not chunk.data and chunk.error is None:  # the end, as of now
                    buffers.release(chunk)
                    return
                if full:
                    pending = _read_ahead(file, buffers, size())
                yield chunk
        finally:
            if pending is not None:
                await pending.discard(buffers)


def _read_ahead(file: Any, buffers: ChunkBuffers, size: int) -> _Read | None:
    """The next chunk, being read now if a reading slot is free right now."""
    chunk = Chunk()
    try:
        buffers.acquire_nowait(chunk)
    except anyio.WouldBlock:
        return None
    return _Read(file, buffers, chunk, size)
