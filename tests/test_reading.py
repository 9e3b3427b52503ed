"""The worker's read path: an aiofiles async generator of chunks, bounded in memory, proven to
carry every byte the worker consumes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from service.sources.files.reading import TURN_CHUNKS, ChunkBuffers, read_chunks
from tests.oracle import expected_of, expected_of_files
from tests.processes import WorkerProcess, worker_env

COUNTER = Path(__file__).resolve().parent / "aiofiles_counter.py"
FAST = ["--poll-interval", "0.05", "--checkpoint-interval", "0.05"]


def _numbers(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(b"%d\n" % rng.randrange(-(10**9), 10**9) for _ in range(count))


def _counted(report: Path) -> int:
    """The bytes aiofiles' reads returned in a counted worker."""
    return sum(int(line) for line in report.read_text().split())


def _counted_run(args: list[str], cwd: Path, report: Path) -> dict[str, object]:
    """Run the worker to its end with aiofiles' reads counted; its result.json."""
    done = subprocess.run(
        [sys.executable, str(COUNTER), str(report), "run", *args],
        cwd=cwd,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((cwd / "result.json").read_text())
    assert isinstance(result, dict)
    return result


@pytest.mark.anyio
async def test_chunks_hold_reading_slots_and_never_exceed_them(tmp_path: Path) -> None:
    """Over two files read at once, at most the limiter's chunks exist, read-ahead included; a
    closed generator frees its slots; every byte arrives, in order."""
    contents = [os.urandom(700_000), os.urandom(900_000)]
    reading = ChunkBuffers(2, 64 * 1024)
    received: list[list[bytes]] = [[], []]
    buffers: set[int] = set()
    most = 0

    async def consume(index: int, fds: list[int]) -> None:
        nonlocal most
        async for chunk in read_chunks(fds[index], reading, lambda _: 64 * 1024):
            most = max(most, reading.in_use)
            received[index].append(bytes(chunk.filled))
            assert chunk.buffer is not None  # each file's end too: more than a quarter chunk
            buffers.add(id(chunk.buffer))
            await anyio.lowlevel.checkpoint()  # let the other file's reader and the read-ahead run
            reading.release(chunk)

    fds = []
    for index, data in enumerate(contents):
        path = tmp_path / f"{index}.bin"
        path.write_bytes(data)
        fds.append(os.open(path, os.O_RDONLY))
    try:
        async with anyio.create_task_group() as readers:
            for index in range(2):
                readers.start_soon(consume, index, fds)
        assert [b"".join(r) for r in received] == contents
        assert most == 2
        assert reading.in_use == 0
        # 25 chunks, read into the same two buffers: nothing allocated per read.
        assert len(buffers) == 2

        os.lseek(fds[0], 0, os.SEEK_SET)
        chunks = read_chunks(fds[0], reading, lambda _: 64 * 1024)
        first = await anext(chunks)  # the next one is being read ahead meanwhile
        assert reading.in_use == 2
        await chunks.aclose()
        reading.release(first)
        assert reading.in_use == 0
    finally:
        for fd in fds:
            os.close(fd)


async def _order_of_chunks(tmp_path: Path, sizes: list[int], chunk: int) -> list[int]:
    """Which file each chunk came from, two files read at once, in the order they arrived. The
    second starts once the first has its first chunk: each generator's open goes through a
    thread (aiofiles), so otherwise either may come first."""
    reading = ChunkBuffers(2, chunk)
    order: list[int] = []
    first_chunk = anyio.Event()

    async def consume(index: int, fd: int, size: int) -> None:
        def read_size(read: int) -> int:
            return min(chunk, size - read)  # 0 at the end

        async for piece in read_chunks(fd, reading, read_size):
            order.append(index)
            first_chunk.set()
            await anyio.sleep(0.001)  # a parse: the other file's reader runs meanwhile
            reading.release(piece)

    fds = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"{index}.bin"
        path.write_bytes(os.urandom(size))
        fds.append(os.open(path, os.O_RDONLY))
    try:
        async with anyio.create_task_group() as readers:
            for index, fd in enumerate(fds):
                readers.start_soon(consume, index, fd, sizes[index])
                await first_chunk.wait()
    finally:
        for fd in fds:
            os.close(fd)
    return order


@pytest.mark.anyio
async def test_one_file_at_a_time_reads_to_its_end(tmp_path: Path) -> None:
    """Two files read at once take turns: the first reads all its chunks (each read ahead while
    the one before is parsed) before the second starts, rather than both parsing at once and
    then both reading at once."""
    chunk = 64 * 1024
    order = await _order_of_chunks(tmp_path, [5 * chunk + 100, 4 * chunk], chunk)
    assert order == [0] * 6 + [1] * 4


@pytest.mark.anyio
async def test_a_long_file_gives_its_turn_up_to_a_waiting_one(tmp_path: Path) -> None:
    """A file longer than a turn does not keep the others waiting to its end."""
    chunk = 64 * 1024
    order = await _order_of_chunks(tmp_path, [3 * TURN_CHUNKS * chunk, 2 * chunk], chunk)
    first_of_second = order.index(1)
    assert TURN_CHUNKS <= first_of_second <= TURN_CHUNKS + 2  # its read ahead may be under way
    assert order.count(1) == 2
    assert len(order) == 3 * TURN_CHUNKS + 2


@pytest.mark.anyio
async def test_chunks_come_through_the_descriptor_of_a_deleted_file(tmp_path: Path) -> None:
    """A file deleted after its open is read to its end through the descriptor."""
    path = tmp_path / "gone.txt"
    path.write_bytes(b"1\n2\n" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    path.unlink()
    reading = ChunkBuffers(2, 256 * 1024)
    data = b""
    try:
        async with contextlib.aclosing(read_chunks(fd, reading, lambda _: 256 * 1024)) as chunks:
            async for chunk in chunks:
                data += chunk.filled
                reading.release(chunk)
    finally:
        os.close(fd)
    assert data == b"1\n2\n" * 100_000


@pytest.mark.parametrize("kind", ["plain", "glob"])
def test_every_byte_consumed_comes_through_aiofiles(tmp_path: Path, kind: str) -> None:
    """A plain path and a glob: aiofiles' reads return exactly the bytes of every file, once."""
    files = 3 if kind == "glob" else 1
    contents = [_numbers(300_000 + index, seed=index) for index in range(files)]
    (tmp_path / "in").mkdir()
    for index, data in enumerate(contents):
        (tmp_path / "in" / f"{index}.txt").write_bytes(data)
    pattern = "in/*.txt" if kind == "glob" else "in/0.txt"
    report = tmp_path / "aiofiles-reads"
    result = _counted_run(["--input", pattern], tmp_path, report)
    expected = expected_of_files(contents)
    assert (result["sum"], result["offset"]) == (expected.sum, expected.offset)
    assert _counted(report) == sum(len(data) for data in contents)


def test_followed_appends_come_through_aiofiles(tmp_path: Path) -> None:
    """Following a glob while lines are appended: every byte consumed came through aiofiles."""
    (tmp_path / "in").mkdir()
    paths = [tmp_path / "in" / f"{index}.txt" for index in range(2)]
    for path in paths:
        path.write_bytes(_numbers(1000, seed=7))
    report = tmp_path / "aiofiles-reads"
    worker = WorkerProcess(
        [str(report), "run", "--input", "in/*.txt", "--follow", *FAST],
        tmp_path,
        worker_env(),
        program=(sys.executable, str(COUNTER)),
    )
    worker.wait_for("caught_up", records=2000)
    rng = random.Random(5)
    for round_ in range(20):
        data = _numbers(rng.randrange(1, 5000), seed=round_)
        cut = rng.randrange(len(data))  # a line split across two writes
        with paths[round_ % 2].open("ab") as handle:
            handle.write(data[:cut])
            handle.flush()
            handle.write(data[cut:])
    expected = expected_of_files([path.read_bytes() for path in paths])
    worker.wait_for("caught_up", timeout=60, records=expected.records)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    stopped = worker.named("worker_stopped")[0]
    assert (stopped["sum"], stopped["offset"]) == (expected.sum, expected.offset)
    assert _counted(report) >= expected.offset


def test_a_paced_worker_reads_a_long_line_in_a_few_reads(tmp_path: Path) -> None:
    """`max_rate` sizes reads to a tenth of a second of records; an 8 MB bad line holds none,
    so the reads inside it grow with it: a few dozen, not one per batch (hundreds; at a low rate,
    a 1 GB line took hours). The line is still one bad record."""
    data = _numbers(1000, seed=3) + b"x" * 8_000_000 + b"\n2\n"
    (tmp_path / "numbers.txt").write_bytes(data)
    report = tmp_path / "reads.txt"
    result = _counted_run(["--max-rate", "100000"], tmp_path, report)
    expected = expected_of(data)
    assert (result["sum"], result["bad_records"]) == (expected.sum, 1)
    reads = report.read_text().split()
    assert _counted(report) == len(data)
    assert len(reads) < 40, f"{len(reads)} reads"


def test_a_low_rate_paces_record_by_record_not_in_bursts(tmp_path: Path) -> None:
    """`--max-rate 2` on short lines: about two records a second from the start, not a burst of
    a read's worth (dozens) followed by as many seconds of nothing."""
    (tmp_path / "numbers.txt").write_bytes(b"".join(b"%d\n" % n for n in range(1, 1001)))
    worker = WorkerProcess(["--max-rate", "2", "--checkpoint-interval", "0.2"], tmp_path)
    first = worker.wait_for("checkpoint_saved", reason="timer")
    assert first["records"] <= 3
    later = worker.wait_for("checkpoint_saved", reason="timer", records=lambda r: r >= 5)
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    stopped = worker.named("worker_stopped")[0]
    assert stopped["records"] <= later["records"] + 2
    assert stopped["sum"] == sum(range(1, stopped["records"] + 1))
