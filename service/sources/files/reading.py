"""A file's bytes as an async generator of chunks, read through aiofiles.

Rule 1: every byte is read with aiofiles from the descriptor the partition opened, never by name
        again: a file renamed or deleted since it was opened is still the file being read.
Rule 2: a chunk holds a reading slot from before its read until its consumer releases it (when
        its parse ends), so at most the limiter's capacity of chunks exist over all files, the
        one read ahead included.
Rule 3: while the consumer parses a full chunk, the next one is read ahead as a task of its own
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

__all__ = ["Chunk", "read_chunks"]


@dataclass(eq=False)
class Chunk:
    """Bytes read from the file, or why not; the chunk itself holds its reading slot."""

    data: bytes = b""
    error: OSError | None = None


class _Read:
    """One chunk being read by a task of its own, holding its slot."""

    def __init__(self, file: Any, chunk: Chunk, size: int) -> None:
        self.chunk = chunk
        self.size = size
        self.task = asyncio.ensure_future(self._read(file))

    async def _read(self, file: Any) -> None:
        try:
            self.chunk.data = await file.read(self.size)
        except OSError as error:  # kept for when the chunk is used
            self.chunk.error = error

    async def done(self) -> Chunk:
        """The chunk once read; a cancelled wait leaves the read running (see `discard`)."""
        await asyncio.wait([self.task])
        self.task.result()
        return self.chunk

    async def discard(self, reading: anyio.CapacityLimiter) -> None:
        with anyio.CancelScope(shield=True):
            await asyncio.wait([self.task])
        reading.release_on_behalf_of(self.chunk)


async def read_chunks(
    fd: int, reading: anyio.CapacityLimiter, size: Callable[[], int]
) -> AsyncGenerator[Chunk, None]:
    """The chunks of the file from the descriptor's position to its end as it is now.

    `size()` is how much to read next. The consumer releases each chunk's slot
    (`reading.release_on_behalf_of(chunk)`) once done with it.
    """
    async with aiofiles.open(fd, "rb", buffering=0, closefd=False) as file:
        pending: _Read | None = None
        try:
            while True:
                if pending is None:
                    chunk = Chunk()
                    await reading.acquire_on_behalf_of(chunk)
                    pending = _Read(file, chunk, size())
                chunk = await pending.done()
                full = len(chunk.data) == pending.size
                pending = None
                if not chunk.data and chunk.error is None:  # the end, as of now
                    reading.release_on_behalf_of(chunk)
                    return
                if full:
                    pending = _read_ahead(file, reading, size())
                yield chunk
        finally:
            if pending is not None:
                await pending.discard(reading)


def _read_ahead(file: Any, reading: anyio.CapacityLimiter, size: int) -> _Read | None:
    """The next chunk, being read now if a reading slot is free right now."""
    chunk = Chunk()
    try:
        reading.acquire_on_behalf_of_nowait(chunk)
    except anyio.WouldBlock:
        return None
    return _Read(file, chunk, size)
