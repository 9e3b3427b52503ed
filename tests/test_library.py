"""The library: the seed's load/save/number_stream, sync and async, over the worker's core."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
from pathlib import Path

import pytest

import service
from service import library
from service.errors import CheckpointCorrupt
from service.library import async_number_stream, load_checkpoint, number_stream, save_checkpoint
from tests.oracle import expected_of

Pairs = list[tuple[int, int]]


def expected_pairs(data: bytes) -> Pairs:
    """(offset after the line, value) of each record, line by line through the oracle."""
    pairs: Pairs = []
    offset = 0
    for piece in data.split(b"\n"):
        line_end = offset + len(piece) + 1
        if line_end > len(data):  # the last line has no '\n'
            line_end = len(data)
        one = expected_of(piece + b"\n")
        if piece and one.records:
            pairs.append((line_end, one.sum))
        offset += len(piece) + 1
    return pairs


@functools.cache
def mixed_input(seed: int) -> bytes:
    """Some 600 KB of records, blanks, CRLFs, bad and over-long lines, no final '\\n'."""
    rng = random.Random(seed)
    lines = []
    for _ in range(30_000):
        kind = rng.random()
        if kind < 0.9:
            lines.append(b"%d" % rng.randint(-(10**9), 10**9))
        elif kind < 0.93:
            lines.append(b" %+d\t\r" % rng.randint(-99, 99))
        elif kind < 0.95:
            lines.append(rng.choice([b"", b"  ", b"\r"]))
        elif kind < 0.97:
            lines.append(rng.choice([b"1.5", b"abc", b"1_000", b"\x00", b"\xff"]))
        elif kind < 0.971:
            lines.append(b"7" * rng.choice([300, 4096, 4097, 9000]))
        else:
            lines.append(b"-" + b"9" * rng.randint(19, 60))
    return b"\n".join(lines)


@pytest.fixture(params=[1, 2], ids=["seed-1", "seed-2"])
def numbers(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_bytes(mixed_input(request.param))
    return path


def test_stream_yields_each_record_with_the_offset_after_it(numbers: Path) -> None:
    """number_stream yields every record, and only records, with the offset after its line."""
    data = numbers.read_bytes()
    assert len(data) > library.STREAM_CHUNK_BYTES  # a line crosses a chunk boundary
    pairs = list(number_stream(numbers))
    assert pairs == expected_pairs(data)
    expected = expected_of(data)
    assert (len(pairs), sum(n for _, n in pairs)) == (expected.records, expected.sum)
    assert pairs[-1][0] == len(data)  # the last line, without '\n', is a record


@pytest.mark.anyio
async def test_async_stream_yields_the_same(numbers: Path) -> None:
    """async_number_stream yields exactly what number_stream does."""
    pairs = [pair async for pair in async_number_stream(numbers)]
    assert pairs == list(number_stream(numbers))


@pytest.mark.parametrize("index", [0, 1, 20_000, -2, -1])
def test_resume_from_a_yielded_offset(numbers: Path, index: int) -> None:
    """Streaming from an offset it yielded continues with exactly the following records."""
    pairs = list(number_stream(numbers))
    offset = pairs[index][0]
    assert list(number_stream(numbers, offset)) == pairs[index:][1:]


@pytest.mark.anyio
@pytest.mark.parametrize("index", [0, 777, -1])
async def test_async_resume_from_a_yielded_offset(numbers: Path, index: int) -> None:
    """The async stream resumes from a yielded offset exactly like the sync one."""
    pairs = list(number_stream(numbers))
    offset = pairs[index][0]
    assert [p async for p in async_number_stream(numbers, offset)] == pairs[index:][1:]


@pytest.mark.parametrize(
    ("data", "pairs"),
    [
        pytest.param(b"1\n2\n3", [(2, 1), (4, 2), (5, 3)], id="last-line-without-newline"),
        pytest.param(b"1\n2\n3\n", [(2, 1), (4, 2), (6, 3)], id="last-line-with-newline"),
        pytest.param(b"-4\r\n\n x\n+5 ", [(4, -4), (11, 5)], id="crlf-blank-bad"),
        pytest.param(b"", [], id="empty"),
        pytest.param(b"\n\n", [], id="only-blank"),
        pytest.param(b"12345678\n9\n", [(11, 9)], id="over-long-skipped"),
    ],
)
def test_small_inputs(data: bytes, pairs: Pairs, tmp_path: Path) -> None:
    """Small inputs give the expected pairs, the last line included even without '\\n'."""
    path = tmp_path / "numbers.txt"
    path.write_bytes(data)
    assert list(number_stream(path, max_line_bytes=4)) == pairs


@pytest.mark.parametrize("stop_after", [0, 1, 25_000])
def test_seed_workflow_resumes_to_the_same_total(
    numbers: Path, tmp_path: Path, stop_after: int
) -> None:
    """Stream part, save_checkpoint, load_checkpoint, stream the rest: the oracle's sum."""
    checkpoint = tmp_path / "checkpoint.json"
    assert load_checkpoint(checkpoint) is None
    offset, running_sum = 0, 0
    for count, (end, number) in enumerate(number_stream(numbers), start=1):
        offset, running_sum = end, running_sum + number
        if count == stop_after:
            break
    save_checkpoint(offset, running_sum, checkpoint, input=numbers)

    saved = load_checkpoint(checkpoint)
    assert saved is not None
    assert (saved.offset, saved.sum) == (offset, running_sum)
    running_sum = saved.sum
    for _, number in number_stream(numbers, saved.offset):
        running_sum += number
    assert running_sum == expected_of(numbers.read_bytes()).sum


@pytest.mark.anyio
async def test_async_seed_workflow(numbers: Path, tmp_path: Path) -> None:
    """The async seed's loop, stopped and resumed through a checkpoint, gives the oracle's sum."""
    checkpoint = tmp_path / "checkpoint.json"
    data = numbers.read_bytes()  # noqa: ASYNC240 - test setup, nothing else runs
    running_sum = 0
    async for offset, number in async_number_stream(numbers):
        running_sum += number
        if offset > len(data) // 2:
            save_checkpoint(offset, running_sum, checkpoint, input=numbers)
            break
    saved = load_checkpoint(checkpoint)
    assert saved is not None
    running_sum = saved.sum
    async for _, number in async_number_stream(numbers, saved.offset):
        running_sum += number
    assert running_sum == expected_of(data).sum


def test_load_checkpoint_reports_a_corrupt_file(tmp_path: Path) -> None:
    """load_checkpoint raises CheckpointCorrupt for a torn file rather than starting over."""
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_bytes(b'{"version": 1, "offset": 12')
    with pytest.raises(CheckpointCorrupt):
        load_checkpoint(checkpoint)
    assert checkpoint.read_bytes() == b'{"version": 1, "offset": 12'


def test_save_checkpoint_counts(numbers: Path, tmp_path: Path) -> None:
    """save_checkpoint stores the counts it is given, readable by load_checkpoint."""
    checkpoint = tmp_path / "checkpoint.json"
    save_checkpoint(100, -7, checkpoint, input=numbers, records=20, bad_records=3)
    saved = load_checkpoint(checkpoint)
    assert saved is not None
    assert (saved.offset, saved.sum, saved.records, saved.bad_records) == (100, -7, 20, 3)


@pytest.mark.parametrize("name", sorted(set(service.__all__) - {"__version__"}))
def test_package_exports(name: str) -> None:
    """Every name `service` exports resolves, as the object its module defines."""
    exported = getattr(service, name)
    assert getattr(exported, "__name__", None) == name


def test_import_service_number_stream(tmp_path: Path) -> None:
    """`import service; service.number_stream` works in a fresh interpreter."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    code = "import service; print(sum(n for _, n in service.number_stream('numbers.txt')))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr


def test_unknown_attribute() -> None:
    """A name the package does not export is an AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="no_such_thing"):
        service.no_such_thing  # noqa: B018
