"""The file source pairs saved states with the files it finds, even while files are renamed.

A rotation (rename the live file, create a new one under its name) can fall between a scan's
listing and its look at a file. These tests make that rename happen at exactly that instant,
on real files, and check that the renamed file resumes where it was: read again from 0, it
would be counted twice.
"""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

import anyio
import pytest

from service.core.decimal_text import int_of
from service.core.position import Position
from service.lifecycle.partition import ReadStatus
from service.settings import Settings
from service.sources.files import scan
from service.sources.files.partition import FilePartition
from service.sources.files.scan import FileKey, InputPatterns, Match, ScanNotes
from service.sources.files.source import FileSource, match_saved_files
from service.storage.checkpoint import Checkpoint, CheckpointStore
from service.telemetry.logs import configure_logging
from tests.saved_states import state_of

CONSUMED = b"1\n2\n3\n"


def _rotate(live: Path, renamed: Path) -> None:
    """What logrotate's default does: rename the live file, create a new one in its place."""
    live.rename(renamed)
    live.write_bytes(b"100\n")


def test_a_file_renamed_while_its_head_is_checked_is_neither_resumed_nor_new(
    tmp_path: Path,
) -> None:
    live = tmp_path / "numbers.txt"
    live.write_bytes(CONSUMED + b"4\n")
    state = state_of(live, CONSUMED)
    patterns = InputPatterns((str(tmp_path / "*.txt*"),))
    found = patterns.scan()
    _rotate(live, tmp_path / "numbers.txt.1")  # after the scan, before the look

    pairing = match_saved_files([state], found)

    (key,) = found
    assert pairing.moving == {key}
    assert key not in pairing.new, "the renamed file would be read again from 0"
    again = match_saved_files([state], patterns.scan())
    (resumed_key, match, resumed) = again.resumed[0]
    assert (resumed_key, match.path, resumed) == (key, str(tmp_path / "numbers.txt.1"), state)
    assert not again.gone


def test_a_rotation_during_the_start_up_scan_resumes_the_renamed_file_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = tmp_path / "in" / "numbers.txt"
    live.parent.mkdir()
    live.write_bytes(CONSUMED + b"4\n")
    state = state_of(live, CONSUMED)
    settings = Settings(
        input=(str(tmp_path / "in" / "*.txt*"),),
        checkpoint=tmp_path / "checkpoint.json",
        result=tmp_path / "result.json",
        follow=True,
    )
    checkpoint = Checkpoint(
        state.position, "in/*.txt*", None, False, files=(state,), gone=Position()
    )
    CheckpointStore(settings.checkpoint).save(checkpoint)

    real_scan = InputPatterns.scan
    scans = 0

    def scan_then_rotate(
        self: InputPatterns, notes: ScanNotes | None = None
    ) -> dict[FileKey, Match]:
        nonlocal scans
        found = real_scan(self, notes)
        scans += 1
        if scans == 1:
            _rotate(live, live.with_name("numbers.txt.1"))
        return found

    monkeypatch.setattr(InputPatterns, "scan", scan_then_rotate)
    source = FileSource(settings, configure_logging("json", "error"))

    partitions = anyio.run(source.start)

    by_path = {p.path: p for p in partitions if isinstance(p, FilePartition)}
    assert by_path[str(live.with_name("numbers.txt.1"))].position == state.position
    assert by_path[str(live)].position == Position(), "the new live file starts at 0"
    assert source.gone == Position(), "nothing was folded as gone"
    assert source.totals() == state.position


def test_a_file_renamed_between_its_look_and_its_open_waits_for_the_next_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation between the partition's stat of the name and its open: not a fatal 'cannot
    open input'; the file is read under its new name from where it was, after the next scan."""
    live = tmp_path / "in" / "numbers.txt"
    live.parent.mkdir()
    live.write_bytes(CONSUMED)
    rotated = live.with_name("numbers.txt.1")
    settings = Settings(
        input=(str(tmp_path / "in" / "*.txt*"),),
        checkpoint=tmp_path / "checkpoint.json",
        result=tmp_path / "result.json",
        follow=True,
    )
    source = FileSource(settings, configure_logging("json", "error"))
    real_stat = os.stat

    def stat_then_rename(path: object, *args: object, **kwargs: object) -> os.stat_result:
        found = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) == str(live) and not rotated.exists():
            live.rename(rotated)  # gone from the name before the open, no new file yet
        return found

    async def scenario() -> list[Position]:
        (partition,) = await source.start()
        assert isinstance(partition, FilePartition)
        monkeypatch.setattr(os, "stat", stat_then_rename)
        first = await partition.next_batch()
        monkeypatch.setattr(os, "stat", real_stat)
        positions = [first.parsed.position]
        await source.discover()  # finds the same inode under its new name
        assert partition.path == str(rotated)
        for _ in range(3):
            positions.append((await partition.next_batch()).parsed.position)
        await source.close()
        return positions

    positions = anyio.run(scenario)
    assert positions[0] == Position()
    assert (positions[-1].records, positions[-1].sum) == (3, 6)


def test_a_link_to_the_checkpoint_is_not_input_right_after_a_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save between a scan's look at the worker's own files and its look at the input makes
    the checkpoint a file that look never saw: a link to it is still known for what it is."""
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text("{}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "numbers.txt").write_bytes(b"1\n")
    (data / "state.txt").symlink_to(checkpoint)
    patterns = InputPatterns.of(
        (str(data / "*.txt"),), (), checkpoint=checkpoint, result=tmp_path / "result.json"
    )
    look = scan._OwnFiles.look

    def look_then_save(cls: type, own: tuple[Path, ...]) -> object:
        seen = look(own)
        (tmp_path / "saving").write_text('{"offset": 2}')
        os.replace(tmp_path / "saving", checkpoint)  # an atomic save: a new file
        return seen

    monkeypatch.setattr(scan._OwnFiles, "look", classmethod(look_then_save))
    assert [match.path for match in patterns.scan().values()] == [str(data / "numbers.txt")]


@pytest.mark.anyio
async def test_a_line_of_millions_of_digits_is_converted_while_the_event_loop_turns(
    tmp_path: Path,
) -> None:
    """A 3-million-digit number takes seconds to convert: it happens off the event loop, which
    keeps its beat (what /healthz reports) instead of stalling until the line is summed."""
    digits = "7" * 3_000_000
    (tmp_path / "numbers.txt").write_text(f"{digits}\n1\n")
    settings = Settings(
        input=(str(tmp_path / "numbers.txt"),),
        checkpoint=tmp_path / "checkpoint.json",
        result=tmp_path / "result.json",
        max_line_bytes=4_000_000,
    )
    source = FileSource(settings, configure_logging("json", "error"))
    source.acquire()
    [partition] = await source.start()
    longest_gap = 0.0
    reading = True

    async def beat() -> None:
        nonlocal longest_gap
        last = time.monotonic()
        while reading:
            await anyio.sleep(0.01)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(beat)
            started = time.monotonic()
            while (await partition.next_batch()).status is not ReadStatus.DONE:
                pass
            took = time.monotonic() - started
            reading = False
    finally:
        await source.close()
    assert partition.position.sum == int_of(digits) + 1
    assert took > 1.0  # long enough that a conversion on the loop would show
    assert longest_gap < took / 2


def test_repeated_double_stars_walk_each_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`**/**/**/*.txt` matches what `**/*.txt` does, and costs what it does: each repeat would
    otherwise walk every directory below each one the previous walk found, without end."""
    for name in ("a/b/c/1.txt", "a/b/2.txt", "a/3.txt", "4.txt", "d/e/5.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"1\n")
    monkeypatch.chdir(tmp_path)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: str = ".") -> object:
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    once = {m.path for m in InputPatterns(("**/*.txt",)).scan().values()}
    listings_once, listed[:] = len(listed), []
    repeated = {m.path for m in InputPatterns(("/".join(["**"] * 12) + "/*.txt",)).scan().values()}
    assert repeated == once
    assert len(once) == 5
    assert len(listed) == listings_once


def test_an_exclude_of_many_double_stars_costs_what_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`**/**/.../nomatch` against a deep file: each name is compared a bounded number of
    times, where trying every split of the path at every `**` grew without end."""
    deep = tmp_path.joinpath(*"abcdefghijkl") / "n.txt"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"1\n")
    compared: list[str] = []

    def counting_fnmatchcase(name: str, pattern: str) -> bool:
        compared.append(name)
        return fnmatch.fnmatchcase(name, pattern)

    monkeypatch.setattr(scan, "fnmatchcase", counting_fnmatchcase)
    monkeypatch.chdir(tmp_path)
    exclude = "/".join(["**"] * 10) + "/nomatch"
    found = InputPatterns(("**/*.txt",), (exclude,)).scan()
    assert [m.path for m in found.values()] == [str(deep.relative_to(tmp_path))]
    assert len(compared) < 1000


@pytest.mark.parametrize(
    ("exclude", "read"),
    [
        ("dir/*.txt", {"dir/sub/deep.txt", "dir/sub/more/deeper.txt"}),  # `*`: one directory
        ("./dir/*.txt", {"dir/sub/deep.txt", "dir/sub/more/deeper.txt"}),
        ("dir/sub/*.txt", {"dir/top.txt", "dir/sub/more/deeper.txt"}),
        ("dir/**/deep*.txt", {"dir/top.txt"}),  # `**`: any depth
        ("dir/**", set()),
        ("deep*.txt", {"dir/top.txt"}),  # no `/`: the file's name, wherever it is
        ("dir/top.txt", {"dir/sub/deep.txt", "dir/sub/more/deeper.txt"}),
    ],
)
def test_exclude_globs_match_paths_as_the_input_globs_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exclude: str, read: set[str]
) -> None:
    """An `exclude` glob with a `/` matches a path as a glob does, `*` within one directory,
    relative to the working directory whether the input is written relative or absolute; one
    without a `/` matches file names."""
    for working in (tmp_path / "one", tmp_path / "two"):  # relative to each, in one process
        for name in ("dir/top.txt", "dir/sub/deep.txt", "dir/sub/more/deeper.txt"):
            (working / name).parent.mkdir(parents=True, exist_ok=True)
            (working / name).write_bytes(b"1\n")
        monkeypatch.chdir(working)
        for pattern in ("dir/**/*.txt", str(working / "dir/**/*.txt")):
            found = InputPatterns((pattern,), (exclude,)).scan()
            assert {os.path.relpath(m.path) for m in found.values()} == read
