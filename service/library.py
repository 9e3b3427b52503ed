"""The seed's `checkpoint_stream` functions, over the same store and parsing core as the worker.

    >>> from service import load_checkpoint, save_checkpoint, number_stream
    >>> checkpoint = load_checkpoint()
    >>> offset, running_sum = (checkpoint.offset, checkpoint.sum) if checkpoint else (0, 0)
    >>> for offset, number in number_stream("numbers.txt", offset):
    ...     running_sum += number
    >>> save_checkpoint(offset, running_sum)

`number_stream` yields (offset after the line, number) for each record, skipping blank lines and
bad records; `async_number_stream` does the same through aiofiles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from service.core.parsing import LineParser, parse_values
from service.core.position import Position
from service.storage.checkpoint import Checkpoint, CheckpointStore, identify_input

__all__ = ["async_number_stream", "load_checkpoint", "number_stream", "save_checkpoint"]

STREAM_CHUNK_BYTES = 256 * 1024
_DEFAULT_MAX_LINE_BYTES = 4096


class SavedCheckpoint:
    """What `load_checkpoint` returns: the checkpoint's fields, flat."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.offset = checkpoint.position.offset
        self.sum = checkpoint.position.sum
        self.records = checkpoint.position.records
        self.bad_records = checkpoint.position.bad_records


def load_checkpoint(path: str | Path = "checkpoint.json") -> SavedCheckpoint | None:
    """The saved checkpoint, or None; CheckpointCorrupt if it exists but is unusable."""
    checkpoint = CheckpointStore(Path(path)).load()
    return SavedCheckpoint(checkpoint) if checkpoint else None


def save_checkpoint(
    offset: int,
    running_sum: int,
    path: str | Path = "checkpoint.json",
    *,
    input: str | Path = "numbers.txt",
    records: int = 0,
    bad_records: int = 0,
    lines: int | None = None,
) -> None:
    """Atomically save a checkpoint at `offset` of `input` (which must exist), like the worker."""
    with open(input, "rb") as handle:
        identity = identify_input(handle.fileno(), offset)
    position = Position(
        offset=offset,
        lines=records + bad_records if lines is None else lines,
        records=records,
        bad_records=bad_records,
        sum=running_sum,
    )
    CheckpointStore(Path(path)).save(Checkpoint(position, str(input), identity))


def _records(parser: LineParser, chunks: Iterable[bytes]) -> Iterator[tuple[int, int]]:
    for chunk in chunks:
        for region in parser.split(chunk):
            for end, value in parse_values(region.data, region.offset, parser.max_line_bytes):
                if isinstance(value, int):
                    yield end, value


def _last_record(parser: LineParser) -> Iterator[tuple[int, int]]:
    unfinished = parser.take_unfinished()
    if unfinished is not None:
        offset, line = unfinished
        for end, value in parse_values(line + b"\n", offset, parser.max_line_bytes):
            if isinstance(value, int):
                yield end - 1, value  # the input has no '\n' after its last line


def _parser(offset: int, max_line_bytes: int) -> LineParser:
    return LineParser(Position(offset=offset), max_line_bytes=max_line_bytes, stop_at_bad=False)


def number_stream(
    filename: str | Path, offset: int = 0, *, max_line_bytes: int = _DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, int]]:
    """Yield (offset after the line, number) for each record from byte `offset` on."""
    parser = _parser(offset, max_line_bytes)
    with open(filename, "rb") as handle:
        handle.seek(offset)
        chunks = iter(lambda: handle.read(STREAM_CHUNK_BYTES), b"")
        yield from _records(parser, chunks)
    yield from _last_record(parser)


async def async_number_stream(
    filename: str | Path, offset: int = 0, *, max_line_bytes: int = _DEFAULT_MAX_LINE_BYTES
) -> AsyncIterator[tuple[int, int]]:
    """The same as `number_stream`, reading through aiofiles, one thread hop per chunk."""
    import aiofiles

    parser = _parser(offset, max_line_bytes)
    async with aiofiles.open(filename, "rb") as handle:
        await handle.seek(offset)
        while chunk := await handle.read(STREAM_CHUNK_BYTES):
            for record in _records(parser, [chunk]):
                yield record
    for record in _last_record(parser):
        yield record
