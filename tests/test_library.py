"""The library: the seed's load/save/number_stream, sync and async, over the worker's core."""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import functools
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import service
from service import aio, library
from service.errors import CheckpointCorrupt, CheckpointOfSeveralFiles, InputChanged, LockHeld
from service.library import load_checkpoint, number_stream, save_checkpoint
from service.settings import MAX_LINE_BYTES
from tests.oracle import expected_of
from tests.processes import WorkerProcess, cli, events_of

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
def mixed_input(seed: int, count: int = 30_000) -> bytes:
    """`count` lines (30,000: some 600 KB) of records, blanks, CRLFs, bad and over-long lines, no
    final '\\n'."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
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
    """service.aio's number_stream yields exactly what number_stream does."""
    pairs = [pair async for pair in aio.number_stream(numbers)]
    assert pairs == list(number_stream(numbers))


@pytest.mark.anyio
async def test_an_async_stream_cancelled_at_any_moment_leaves_no_descriptor_open(
    numbers: Path,
) -> None:
    """A task reading the async stream, cancelled while it opens the file or reads it: every
    descriptor it opened is closed, so a service that restarts readers never runs out."""

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def read_some() -> None:
        async with contextlib.aclosing(aio.number_stream(numbers)) as stream:
            async for _ in stream:
                pass

    before = open_descriptors()
    for attempt in range(60):
        with anyio.move_on_after(attempt * 0.0002):
            await read_some()
    await anyio.sleep(0.05)  # a thread still opening sees its result dropped
    assert open_descriptors() == before


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
    assert [p async for p in aio.number_stream(numbers, offset)] == pairs[index:][1:]


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
    offset, running_sum = load_checkpoint(checkpoint)
    assert (offset, running_sum) == (0, 0)
    for count, (end, number) in enumerate(number_stream(numbers), start=1):
        offset, running_sum = end, running_sum + number
        if count == stop_after:
            break
    save_checkpoint(offset, running_sum, checkpoint, input=numbers)

    offset, running_sum = load_checkpoint(checkpoint)
    for _, number in number_stream(numbers, offset):
        running_sum += number
    assert running_sum == expected_of(numbers.read_bytes()).sum


@pytest.mark.anyio
async def test_async_seed_workflow(numbers: Path, tmp_path: Path) -> None:
    """The async seed's loop, stopped and resumed through a checkpoint, gives the oracle's sum."""
    checkpoint = tmp_path / "checkpoint.json"
    data = numbers.read_bytes()  # noqa: ASYNC240 - test setup, nothing else runs
    start, running_sum = await aio.load_checkpoint(checkpoint)
    async with contextlib.aclosing(aio.number_stream(numbers, start)) as stream:
        async for offset, number in stream:
            running_sum += number
            if offset > len(data) // 2:
                await aio.save_checkpoint(offset, running_sum, checkpoint, input=numbers)
                break
    offset, running_sum = await aio.load_checkpoint(checkpoint)
    async for _, number in aio.number_stream(numbers, offset):
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
    offset = numbers.read_bytes().index(b"\n", 100) + 1  # where a line ends
    save_checkpoint(offset, -7, checkpoint, input=numbers, records=20, bad_records=3)
    saved = load_checkpoint(checkpoint)
    assert (saved.offset, saved.sum, saved.records, saved.bad_records) == (offset, -7, 20, 3)


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


def counts_at(data: bytes, offset: int) -> tuple[int, int, int]:
    """(lines, records, bad records) of the input's first `offset` bytes, by the oracle."""
    prefix = expected_of(data[:offset])
    return prefix.lines, prefix.records, prefix.bad_records


def test_no_checkpoint_unpacks_as_zero(tmp_path: Path) -> None:
    """`offset, running_sum = load_checkpoint()` gives (0, 0) when there is no checkpoint."""
    saved = load_checkpoint(tmp_path / "checkpoint.json")
    offset, running_sum = saved
    assert (offset, running_sum, saved.records, saved.input, saved.checkpoint) == (
        0,
        0,
        0,
        None,
        None,
    )


@pytest.mark.parametrize("stop_after", [1, 777, 25_000])
def test_a_save_holds_the_counts_the_stream_reached(
    numbers: Path, tmp_path: Path, stop_after: int
) -> None:
    """save_checkpoint(pos, sum) saves the lines, records and bad records read up to pos."""
    checkpoint = tmp_path / "checkpoint.json"
    data = numbers.read_bytes()
    running_sum = 0
    for count, (offset, number) in enumerate(number_stream(numbers), start=1):
        running_sum += number
        if count == stop_after:
            save_checkpoint(offset, running_sum, checkpoint, input=numbers)
            break
    saved = load_checkpoint(checkpoint)
    assert (saved.lines, saved.records, saved.bad_records) == counts_at(data, offset)
    assert (saved.offset, saved.sum, saved.input) == (offset, running_sum, str(numbers))


@pytest.mark.anyio
async def test_the_counts_carry_on_from_a_loaded_checkpoint(numbers: Path, tmp_path: Path) -> None:
    """A stream that starts where a loaded checkpoint left off counts on from its counts."""
    checkpoint = tmp_path / "checkpoint.json"
    data = numbers.read_bytes()  # noqa: ASYNC240 - test setup, nothing else runs
    pairs = list(number_stream(numbers))
    first, second = pairs[9_000], pairs[21_000]
    save_checkpoint(*first, checkpoint, input=numbers, **_counted(data, first[0]))
    list(number_stream(numbers))  # another stream of the same file reaches its end meanwhile
    start, running_sum = await aio.load_checkpoint(checkpoint, input=numbers)
    async with contextlib.aclosing(aio.number_stream(numbers, start)) as stream:
        async for offset, number in stream:
            running_sum += number
            if offset == second[0]:
                await aio.save_checkpoint(offset, running_sum, checkpoint, input=numbers)
                break
    saved = load_checkpoint(checkpoint)
    assert (saved.lines, saved.records, saved.bad_records) == counts_at(data, second[0])


def test_a_save_at_an_earlier_position_of_a_stream_holds_the_counts_there(
    numbers: Path, tmp_path: Path
) -> None:
    """Positions a stream yielded before its last one (a list of them, a save lagging behind
    the reading), saved in any order with loads between: each save holds the counts at its
    position, and a stream resumed from one of them counts on from there."""
    checkpoint = tmp_path / "checkpoint.json"
    data = numbers.read_bytes()
    pairs = list(number_stream(numbers))
    for index in (777, 25_000, 3, len(pairs) - 1, 1):
        offset = pairs[index][0]
        save_checkpoint(offset, 5, checkpoint, input=numbers)
        saved = load_checkpoint(checkpoint)
        assert (saved.lines, saved.records, saved.bad_records) == counts_at(data, offset)
    resumed = number_stream(numbers, pairs[1][0])
    for _ in range(1000):
        next(resumed)
    save_checkpoint(pairs[500][0], 5, checkpoint, input=numbers)  # before that stream's last
    saved = load_checkpoint(checkpoint)
    assert (saved.lines, saved.records, saved.bad_records) == counts_at(data, pairs[500][0])


def _counted(data: bytes, offset: int) -> dict[str, int]:
    lines, records, bad_records = counts_at(data, offset)
    return {"lines": lines, "records": records, "bad_records": bad_records}


def test_a_save_where_no_stream_was_saves_the_counts_given(numbers: Path, tmp_path: Path) -> None:
    """A save at a position no stream of this process yielded keeps the given counts, else 0."""
    checkpoint = tmp_path / "checkpoint.json"
    offset = numbers.read_bytes().index(b"\n", 5000) + 1
    save_checkpoint(offset, 12, checkpoint, input=numbers)
    saved = load_checkpoint(checkpoint)
    assert (saved.offset, saved.sum, saved.lines, saved.records, saved.bad_records) == (
        offset,
        12,
        0,
        0,
        0,
    )


@pytest.mark.parametrize(
    ("offset", "counts", "message"),
    [
        pytest.param(10**9, {}, "past the end", id="past-the-end"),
        pytest.param(-1, {}, "counts must be", id="negative"),
        pytest.param(10, {"records": 11}, "counts must be", id="more-records-than-bytes"),
        pytest.param(10, {"records": 3, "lines": 2}, "counts must be", id="fewer-lines"),
    ],
)
def test_a_save_that_cannot_be_resumed_is_refused(
    numbers: Path, tmp_path: Path, offset: int, counts: dict[str, int], message: str
) -> None:
    """Counts or offsets no file could have are a ValueError, and nothing is written."""
    checkpoint = tmp_path / "checkpoint.json"
    with pytest.raises(ValueError, match=message):
        save_checkpoint(offset, 0, checkpoint, input=numbers, **counts)
    assert not checkpoint.exists()


def test_a_checkpoint_of_several_files_needs_the_file_named(tmp_path: Path) -> None:
    """Without `input=`, a checkpoint of several files is one clear error; with it, that file's
    own offset and sum, and a save replaces that file's entry alone."""
    checkpoint = tmp_path / "checkpoint.json"
    for name, data in (("a.txt", b"1\n2\n3\n"), ("b.txt", b"10\n20\n")):
        (tmp_path / name).write_bytes(data)
    save_checkpoint(2, 1, checkpoint, input=tmp_path / "a.txt")
    save_checkpoint(3, 10, checkpoint, input=tmp_path / "b.txt")
    with pytest.raises(CheckpointOfSeveralFiles, match=r"2 files .*a\.txt.*load_checkpoint\(input"):
        load_checkpoint(checkpoint)
    assert tuple(load_checkpoint(checkpoint, input=tmp_path / "b.txt")) == (3, 10)
    new = load_checkpoint(checkpoint, input=tmp_path / "c.txt")  # not in it yet: from 0
    assert (tuple(new), new.input) == ((0, 0), str(tmp_path / "c.txt"))
    save_checkpoint(6, 6, checkpoint, input=tmp_path / "a.txt")
    assert tuple(load_checkpoint(checkpoint, input=tmp_path / "a.txt")) == (6, 6)
    assert tuple(load_checkpoint(checkpoint, input=tmp_path / "b.txt")) == (3, 10)
    whole = load_checkpoint(checkpoint, input=tmp_path / "b.txt").checkpoint
    assert whole is not None
    assert (whole.position.offset, whole.position.sum) == (9, 16)


@pytest.mark.parametrize("change", ["rewritten", "truncated"])
def test_load_reports_an_input_that_changed(numbers: Path, tmp_path: Path, change: str) -> None:
    """Resuming a file that no longer holds what was consumed is InputChanged, not a wrong sum."""
    checkpoint = tmp_path / "checkpoint.json"
    data = numbers.read_bytes()
    save_checkpoint(data.index(b"\n", len(data) // 2) + 1, 0, checkpoint, input=numbers)
    numbers.write_bytes(b"7" + data[1:] if change == "rewritten" else data[:100])
    with pytest.raises(InputChanged, match="no longer holds"):
        load_checkpoint(checkpoint)


def test_save_refuses_while_a_worker_runs_on_the_checkpoint(numbers: Path, tmp_path: Path) -> None:
    """A save while a worker runs on the checkpoint is LockHeld, and the checkpoint is kept."""
    checkpoint = tmp_path / "checkpoint.json"
    args = ["--follow", "--input", str(numbers), "--checkpoint-interval", "0.1"]
    worker = WorkerProcess(args, tmp_path)
    try:
        worker.wait_for("checkpoint_saved")
        before = checkpoint.read_bytes()
        with pytest.raises(LockHeld, match="refusing to save a checkpoint"):
            save_checkpoint(2, 1, checkpoint, input=numbers)
        assert checkpoint.read_bytes() == before
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.finish() == 0


def test_the_async_forms_are_coroutines_and_an_async_generator() -> None:
    """service.aio has load and save as coroutines and number_stream as an async generator."""
    assert inspect.iscoroutinefunction(aio.load_checkpoint)
    assert inspect.iscoroutinefunction(aio.save_checkpoint)
    assert inspect.isasyncgenfunction(aio.number_stream)


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ({"running_sum": True}, "running_sum must be an integer, not bool"),
        ({"offset": True}, "offset must be an integer, not bool"),
        ({"records": False}, "records must be an integer, not bool"),
        ({"running_sum": 6.0}, "running_sum must be an integer, not float"),
        ({"running_sum": decimal.Decimal(6)}, "running_sum must be an integer, not Decimal"),
        ({"running_sum": "6"}, "running_sum must be an integer, not str"),
    ],
)
@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_save_of_a_number_that_is_no_integer_is_a_type_error_and_keeps_the_checkpoint(
    tmp_path: Path, values: dict[str, object], refused: str, form: str
) -> None:
    """`save_checkpoint(pos, total > 0)` by mistake: a TypeError, and the checkpoint on disk is
    the one before, still loadable (a `True` written as the sum made it unreadable)."""
    checkpoint = tmp_path / "checkpoint.json"
    numbers = tmp_path / "numbers.txt"
    numbers.write_bytes(b"1\n2\n3\n")
    save_checkpoint(4, 3, checkpoint, input=numbers)
    before = checkpoint.read_bytes()
    arguments: dict[str, Any] = {"offset": 6, "running_sum": 6, **values}
    if form == "sync":
        save = functools.partial(save_checkpoint, path=checkpoint, input=numbers, **arguments)
    else:
        save_async = functools.partial(aio.save_checkpoint, path=checkpoint, input=numbers)
        save = functools.partial(asyncio.run, save_async(**arguments))
    with pytest.raises(TypeError, match=refused):
        save()
    assert checkpoint.read_bytes() == before
    assert tuple(load_checkpoint(checkpoint)) == (4, 3)


def test_numpy_integers_are_integers_to_a_save(tmp_path: Path) -> None:
    """A sum kept in a numpy integer is saved as the integer it holds."""
    numpy = pytest.importorskip("numpy")
    checkpoint = tmp_path / "checkpoint.json"
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n3\n")
    save_checkpoint(numpy.int64(6), numpy.int64(6), checkpoint, input=tmp_path / "numbers.txt")
    assert tuple(load_checkpoint(checkpoint)) == (6, 6)


_HANGS_WITHOUT_O_NONBLOCK = """
import contextlib, sys
from service import load_checkpoint, number_stream, save_checkpoint
what = sys.argv[1]
try:
    if what == "load":
        load_checkpoint("checkpoint.json")
    elif what == "save to a fifo input":
        save_checkpoint(0, 0, "other.json", input="numbers.txt")
    elif what == "save to a fifo checkpoint":
        save_checkpoint(0, 0, "fifo.json", input="data.txt")
    else:
        next(number_stream("numbers.txt"))
except Exception as error:
    print(type(error).__name__, error)
"""


@pytest.mark.parametrize(
    ("what", "raised"),
    [
        ("load", "InputChanged input numbers.txt is no longer a regular file"),
        ("save to a fifo input", "OSError [Errno 22] not a regular file: 'numbers.txt'"),
        ("save to a fifo checkpoint", "OSError [Errno 22] not a regular file: '/"),
        ("stream", "OSError [Errno 22] not a regular file: 'numbers.txt'"),
    ],
)
def test_a_fifo_is_refused_by_the_library_never_waited_on(
    tmp_path: Path, what: str, raised: str
) -> None:
    """A FIFO where the input or the checkpoint was (the worker refuses one too): an error at
    once, where opening it waited for a writer forever, holding the worker's lock for a save;
    and no lock file is made beside a checkpoint that is no file."""
    (tmp_path / "data.txt").write_bytes(b"1\n2\n")
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    with contextlib.chdir(tmp_path):  # the checkpoint names the input as the test does below
        save_checkpoint(2, 1, "checkpoint.json", input="numbers.txt")
    (tmp_path / "numbers.txt").unlink()
    os.mkfifo(tmp_path / "numbers.txt")
    os.mkfifo(tmp_path / "fifo.json")
    done = subprocess.run(
        [sys.executable, "-c", _HANGS_WITHOUT_O_NONBLOCK, what],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.startswith(raised), done.stdout + done.stderr
    assert not (tmp_path / "fifo.json.lock").exists()
    assert (
        cli(["run", "--input", "data.txt", "--checkpoint", "other.json"], tmp_path).returncode == 0
    )


@pytest.mark.parametrize("limit", [0, -1, MAX_LINE_BYTES + 1])
def test_a_stream_with_no_line_it_could_accept_is_a_value_error(tmp_path: Path, limit: int) -> None:
    """`max_line_bytes=0` would make every line bad and the sum silently 0."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    with pytest.raises(ValueError, match="max_line_bytes must be from 1 to"):
        next(number_stream(tmp_path / "numbers.txt", max_line_bytes=limit))


# --- a file named another way, a line that went on, offsets inside a line ----------------------


def test_a_file_named_from_another_directory_keeps_its_one_entry(tmp_path: Path) -> None:
    """A checkpoint that names `data/a.txt` is resumed and saved from `sub/` as `../data/a.txt`:
    the library finds the file's entry by its inode and replaces it, under the name it had, so
    the worker on the glob counts each record once (a second entry counted 1,000 twice)."""
    data = tmp_path / "data"
    data.mkdir()
    contents = {name: b"".join(b"%d\n" % (i * 7) for i in range(3000)) for name in "ab"}
    for name, body in contents.items():
        (data / f"{name}.txt").write_bytes(body)
    first = cli(["run", "--input", "data/*.txt"], tmp_path)
    assert first.returncode == 0
    sub = tmp_path / "sub"
    sub.mkdir()
    checkpoint, named = tmp_path / "checkpoint.json", "../data/a.txt"
    with contextlib.chdir(sub):
        saved = load_checkpoint(checkpoint, input=named)
        assert saved.offset == len(contents["a"])  # the worker's entry, not a new file's (0, 0)
        offset, running_sum = saved
        save_checkpoint(offset, running_sum, checkpoint, input=named)
    entries = load_checkpoint(checkpoint, input=data / "a.txt").checkpoint
    assert entries is not None
    assert sorted(f.path for f in entries.files) == ["data/a.txt", "data/b.txt"]
    (data / "a.txt").write_bytes(contents["a"] + b"5\n")
    rerun = cli(["run", "--input", "data/*.txt"], tmp_path)
    assert rerun.returncode == 0
    whole = expected_of(contents["a"] + b"5\n" + contents["b"])
    [completed] = [e for e in events_of(rerun.stdout) if e["event"] == "completed"]
    assert (completed["sum"], completed["records"]) == (whole.sum, whole.records)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\t \r\n"], ids=["lf", "crlf", "blanks"])
def test_a_last_line_that_went_on_is_an_input_change_and_its_newline_is_taken(
    tmp_path: Path, ending: bytes
) -> None:
    """`12` counted without its '\\n': a file that goes on `125` is InputChanged (the worker
    says so too), never a silent 120; one that got its end ('\\n', after blanks or a '\\r')
    resumes after it, the line the same, with the counts the worker gives."""
    numbers, checkpoint = tmp_path / "numbers.txt", tmp_path / "checkpoint.json"
    numbers.write_bytes(b"1\n2\n12")
    _seed_loop(numbers, checkpoint)
    backup = checkpoint.read_bytes()
    numbers.write_bytes(b"1\n2\n125\n100\n")
    with pytest.raises(InputChanged, match="goes on past"):
        load_checkpoint(checkpoint)
    assert cli(["run"], tmp_path).returncode == 1
    checkpoint.write_bytes(backup)
    numbers.write_bytes(b"1\n2\n12" + ending + b"5\nx\n7\n")
    _seed_loop(numbers, checkpoint)
    saved = load_checkpoint(checkpoint)
    assert (saved.sum, saved.lines, saved.records, saved.bad_records) == (27, 6, 5, 1)
    assert saved.completed
    checkpoint.write_bytes(backup)
    assert cli(["run"], tmp_path).returncode == 0
    assert json.loads((tmp_path / "result.json").read_text())["lines"] == 6


def test_a_file_named_in_bytes_is_saved_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`number_stream(b"numbers.txt")` saves the entry as `numbers.txt`, never `b'...'`, and
    the worker resumes it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n")
    pairs = list(number_stream(b"numbers.txt"))  # type: ignore[arg-type]
    save_checkpoint(pairs[-1][0], sum(number for _, number in pairs))
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert [f["path"] for f in saved["files"]] == ["numbers.txt"]
    assert load_checkpoint(input=b"numbers.txt").input == "numbers.txt"  # type: ignore[arg-type]


def _seed_loop(numbers: Path, checkpoint: Path) -> None:
    """The seed's loop to the file's end: load, stream, save at each record."""
    offset, running_sum = load_checkpoint(checkpoint)
    for position, number in number_stream(numbers, offset):
        running_sum += number
        save_checkpoint(position, running_sum, checkpoint)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(2, "inside a line"), (-3, "must be >= 0"), (10**6, "past the end")],
)
def test_an_offset_inside_a_line_or_outside_the_file_is_a_value_error(
    tmp_path: Path, offset: int, message: str
) -> None:
    """A stream from, or a save at, the middle of `12345` would give a number no line holds
    (345): a ValueError, the checkpoint never written; the async forms say the same."""
    numbers, checkpoint = tmp_path / "numbers.txt", tmp_path / "checkpoint.json"
    numbers.write_bytes(b"12345\n-7\n")
    with pytest.raises(ValueError, match=message):
        list(number_stream(numbers, offset))
    with pytest.raises(ValueError, match=message if offset >= 0 else "counts must be"):
        save_checkpoint(offset, 345, checkpoint, input=numbers)
    assert not checkpoint.exists()

    async def stream_async() -> None:
        async for _ in aio.number_stream(numbers, offset):
            pass

    with pytest.raises(ValueError, match=message):
        anyio.run(stream_async)


def test_two_streams_of_one_file_each_keep_their_counts(numbers: Path, tmp_path: Path) -> None:
    """A second stream of the file started before the save: the save still holds the counts
    the first one reached at its position (they were dropped to 0)."""
    checkpoint = tmp_path / "checkpoint.json"
    first = number_stream(numbers)
    running_sum = 0
    for count, pair in enumerate(first, start=1):
        running_sum += pair[1]
        if count == 10_000:
            break
    position = pair[0]
    second = number_stream(numbers)
    next(second)
    save_checkpoint(position, running_sum, checkpoint, input=numbers)
    saved = load_checkpoint(checkpoint)
    assert (saved.lines, saved.records, saved.bad_records) == counts_at(
        numbers.read_bytes(), position
    )


def test_a_save_not_told_the_file_saves_the_one_streamed(tmp_path: Path) -> None:
    """The seed's `save_checkpoint(pos, sum)` after a stream of `data.txt` is data.txt's, even
    with a numbers.txt beside it; at the file's end it is completed."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n" * 100)
    (tmp_path / "data.txt").write_bytes(b"5\n6\n")
    with contextlib.chdir(tmp_path):
        running_sum = 0
        for offset, number in number_stream("data.txt"):
            running_sum += number
            save_checkpoint(offset, running_sum)
            assert load_checkpoint().completed == (offset == 4)
        saved = load_checkpoint()
    assert (saved.input, saved.offset, saved.sum, saved.records) == ("data.txt", 4, 11, 2)


def test_an_async_save_behind_the_reading_counts_again_off_the_event_loop(
    numbers: Path, tmp_path: Path
) -> None:
    """Counting the bytes before an earlier position again reads the file: in a thread, never
    on the event loop's."""
    checkpoint = tmp_path / "checkpoint.json"
    pairs = list(number_stream(numbers))
    threads: list[str] = []
    count_again = library._count_again

    def spied(*args: Any) -> tuple[int, int, int]:
        threads.append(threading.current_thread().name)
        return count_again(*args)

    async def save_behind() -> None:
        await aio.save_checkpoint(pairs[900][0], 0, checkpoint, input=numbers)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(library, "_count_again", spied)
        anyio.run(save_behind)
    assert threads
    assert threading.main_thread().name not in threads
    saved = load_checkpoint(checkpoint)
    assert (saved.lines, saved.records) == counts_at(numbers.read_bytes(), pairs[900][0])[:2]


@pytest.mark.parametrize("given", ["./numbers.txt", "data/../numbers.txt"])
def test_a_plain_path_named_another_way_is_still_one_file_whose_replacement_is_a_change(
    tmp_path: Path, given: str
) -> None:
    """The worker ran on `--input ./numbers.txt`; the file is then replaced. To the library,
    as to the worker, that is the input changed (InputChanged), never a new file starting at
    (0, 0) whose save would add a second entry and count the file twice."""
    (tmp_path / "data").mkdir()
    (tmp_path / "numbers.txt").write_bytes(b"1\n2\n3\n")
    assert cli(["run", "--input", given], tmp_path).returncode == 0
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"7\n8\n9\n10\n")
    replacement.replace(tmp_path / "numbers.txt")
    with contextlib.chdir(tmp_path), pytest.raises(InputChanged):
        load_checkpoint(input="numbers.txt")
