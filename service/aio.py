"""The seed's coroutine library: `service`'s three functions for async code, one checkpoint file.

    from service.aio import load_checkpoint, save_checkpoint, number_stream

    offset, running_sum = await load_checkpoint()
    async for offset, number in number_stream("numbers.txt", offset):
        running_sum += number
        await save_checkpoint(offset, running_sum)  # now and then

The file reads go through aiofiles and the blocking checkpoint work (fsync, rename) runs in a
thread, so the event loop keeps turning. aiofiles runs on asyncio only.
"""

from __future__ import annotations

import functools
import io
from collections.abc import AsyncGenerator
from pathlib import Path

import aiofiles
import anyio

from service.library import (
    DEFAULT_MAX_LINE_BYTES,
    STREAM_CHUNK_BYTES,
    SavedCheckpoint,
    Stream,
    known_counts,
    position_at,
    saved_input,
    stream_start,
    write_position,
)
from service.library import load_checkpoint as _load_checkpoint
from service.storage.atomic import open_regular_file

__all__ = ["load_checkpoint", "number_stream", "save_checkpoint"]


def _open_for_reading(filename: str | Path) -> io.FileIO:
    """A file object owning a descriptor of `filename`, a regular file (OSError otherwise)."""
    fd, _ = open_regular_file(filename)
    return io.FileIO(fd, "rb", closefd=True)


async def load_checkpoint(
    path: str | Path = "checkpoint.json", *, input: str | Path | None = None
) -> SavedCheckpoint:
    """`service.load_checkpoint`, read off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(_load_checkpoint, path, input=input))


async def save_checkpoint(
    offset: int,
    running_sum: int,
    path: str | Path = "checkpoint.json",
    *,
    input: str | Path | None = None,
    records: int | None = None,
    bad_records: int | None = None,
    lines: int | None = None,
) -> None:
    """`service.save_checkpoint`, written off the event loop, atomically and durably."""
    input = saved_input(input)
    # What the streams counted is taken here, on the loop, before a stream can move on; a
    # count again of the bytes before an earlier position reads the file, in the thread.
    known = known_counts(input)

    def save() -> None:
        position = position_at(input, offset, running_sum, records, bad_records, lines, known=known)
        write_position(Path(path), input, position)

    await anyio.to_thread.run_sync(save)


async def number_stream(
    filename: str | Path, offset: int = 0, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> AsyncGenerator[tuple[int, int], None]:
    """Yield (offset after the line, number) for each record from byte `offset` on, through
    aiofiles, one thread hop a chunk."""
    start = await anyio.to_thread.run_sync(stream_start, filename, offset, max_line_bytes)
    stream = Stream(filename, offset, start, max_line_bytes)
    # The descriptor is closed here whatever happens, a cancellation while aiofiles opens
    # its own file object on it included (that one does not close it).
    owner = await anyio.to_thread.run_sync(_open_for_reading, filename)
    with owner:
        async with aiofiles.open(owner.fileno(), "rb", buffering=0, closefd=False) as handle:
            await handle.seek(start)
            while chunk := await handle.read(STREAM_CHUNK_BYTES):
                for record in stream.feed(chunk):
                    yield record
    for record in stream.end():
        yield record
