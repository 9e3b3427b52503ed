"""A file of a glob is known across restarts by what it is, not by its name: real files, real
runs, the changes an operator makes while the worker is stopped.

Known as: its inode, the inode's generation where the file system keeps one (ext4, XFS, Btrfs:
an inode number used again gets a new one), and the hash of its first bytes. A saved file that
no pattern finds is kept closed where its generation is known, so it is never read twice when
it is back; without one it is folded at once, as a new file could take its inode number.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from service.sources.files import source
from service.sources.files.scan import Match
from service.sources.files.source import match_saved_files
from service.storage.checkpoint import FileState, generation_of
from tests.oracle import expected_of_files
from tests.processes import WorkerProcess, cli, events_of
from tests.saved_states import state_of

GLOB = ["run", "--input", "in/*.txt*"]


def _result(cwd: Path) -> tuple[int, int]:
    result = json.loads((cwd / "result.json").read_text())
    return result["sum"], result["records"]


def _expected(*contents: bytes) -> tuple[int, int]:
    expected = expected_of_files(list(contents))
    return expected.sum, expected.records


def _generation(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return generation_of(fd)
    finally:
        os.close(fd)


def _generations_kept(directory: Path) -> bool:
    probe = directory / ".generation-probe"
    probe.write_bytes(b"")
    try:
        return _generation(probe) is not None
    finally:
        probe.unlink()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    if not _generations_kept(tmp_path / "in"):
        pytest.skip("this file system keeps no inode generations (FS_IOC_GETVERSION)")
    return tmp_path / "in"


def _found(path: Path) -> dict[tuple[int, int], Match]:
    info = path.stat()
    return {(info.st_dev, info.st_ino): Match(str(path), info.st_ino, info.st_size)}


def test_a_file_of_another_generation_is_another_file_whatever_it_holds(inputs: Path) -> None:
    """The same inode number and the same first bytes, but not the same generation: the inode
    was used again by a new file. Its state is not resumed in it."""
    path = inputs / "a.txt"
    path.write_bytes(b"1\n2\n3\n")
    generation = _generation(path)
    assert generation is not None
    other = state_of(path, b"1\n2\n3\n", generation ^ 1)
    pairing = match_saved_files([other], _found(path))
    assert (pairing.resumed, pairing.gone, list(pairing.new.values())) == (
        [],
        [other],
        [Match(str(path), path.stat().st_ino, 6)],
    )
    same = state_of(path, b"1\n2\n3\n", generation)
    assert [state for _, _, state in match_saved_files([same], _found(path)).resumed] == [same]


def test_a_file_of_the_same_generation_is_the_same_file_under_any_name_and_bytes(
    inputs: Path,
) -> None:
    """The same inode and generation under another name, with other first bytes: the saved
    file, rewritten and renamed. It is resumed, for its first look to say it changed."""
    path = inputs / "a.txt"
    path.write_bytes(b"1\n2\n3\n")
    saved = state_of(path, b"1\n2\n3\n", _generation(path))
    path.write_bytes(b"7\n")  # truncated and written again: the same inode
    renamed = inputs / "a.txt.1"
    path.rename(renamed)
    [(_, match, state)] = match_saved_files([saved], _found(renamed)).resumed
    assert (match.path, state) == (str(renamed), saved)


@pytest.mark.parametrize("policy", ["fail", "restart"])
def test_a_file_rewritten_and_renamed_while_stopped_is_an_input_change(
    inputs: Path, policy: str
) -> None:
    """`> a.txt` then `mv a.txt a.txt.1` between two runs: the same file (same inode and
    generation) cut below its position. `fail` stops with exit 1; `restart` takes what it
    added out and reads it again. Never counted on top of what it added before."""
    cwd = inputs.parent
    (inputs / "a.txt").write_bytes(b"1\n2\n3\n")
    (inputs / "b.txt").write_bytes(b"100\n")
    args = [*GLOB, "--on-input-change", policy]
    assert cli(args, cwd).returncode == 0
    with (inputs / "a.txt").open("r+b") as rewrite:
        rewrite.truncate(0)
        rewrite.write(b"7\n")
    (inputs / "a.txt").rename(inputs / "a.txt.1")
    again = cli(args, cwd)
    [changed] = [e for e in events_of(again.stdout) if e["event"] == "input_changed"]
    assert (changed["path"], changed["action"]) == ("in/a.txt.1", policy)
    assert not [e for e in events_of(again.stdout) if e["event"] == "file_discovered"]
    if policy == "fail":
        assert again.returncode == 1
        assert _result(cwd) == _expected(b"1\n2\n3\n", b"100\n")  # the first run's, as it was
        return
    assert again.returncode == 0
    assert _result(cwd) == _expected(b"7\n", b"100\n")


def _delete_and_give_its_inode_to(deleted: Path, new: Path, content: bytes) -> None:
    """Delete `deleted`, and create `new` holding `content` on the inode number it had."""
    inode = deleted.stat().st_ino
    deleted.unlink()
    # ext4 hands out the lowest free inode of the directory's group: files outside the glob
    # take the lower ones other tests freed, until one is given the number just freed.
    for attempt in range(2000):
        filler = deleted.parent / f"filler-{attempt}"
        filler.write_bytes(content)
        if filler.stat().st_ino == inode:
            filler.rename(new)
            return
    pytest.skip("the file system gave no new file the deleted file's inode number")


def test_a_new_file_that_took_a_deleted_files_inode_is_read_whole(inputs: Path) -> None:
    """`rm a.txt`, then a new file with the same bytes, while the worker is stopped: the file
    system gives the new file the freed inode number. It is a new file, read from its start,
    and the deleted one's records stay counted."""
    cwd = inputs.parent
    content = b"".join(b"%d\n" % n for n in range(1, 101))
    (inputs / "a.txt").write_bytes(content)
    assert cli(GLOB, cwd).returncode == 0
    _delete_and_give_its_inode_to(inputs / "a.txt", inputs / "b.txt", content)
    again = cli(GLOB, cwd)
    assert again.returncode == 0
    events = events_of(again.stdout)
    assert [e["path"] for e in events if e["event"] == "file_discovered"] == ["in/b.txt"]
    assert not [e for e in events if e["event"] == "file_rotated"]
    assert _result(cwd) == _expected(content, content)


def _wait_for_more(worker: WorkerProcess, event: str, seen: int) -> None:
    """Wait until the worker has logged `event` more than `seen` times."""
    deadline = time.monotonic() + 30
    while len([e for e in worker.events if e["event"] == event]) <= seen:
        assert time.monotonic() < deadline, f"no new {event}"
        time.sleep(0.05)


def _assert_removed(worker: WorkerProcess, path: str) -> None:
    removed = worker.wait_for("file_removed", path=path)
    # Deleted, when its reopen finds another generation; `inactive` in the rare case a scan
    # came between the unlink and the new file's rename, and closed it as gone from the glob.
    assert removed["reason"] in ("deleted", "inactive")


def _stop_and_total(worker: WorkerProcess) -> tuple[int, int]:
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    final = worker.wait_for("checkpoint_saved", reason="shutdown")
    return final["sum"], final["records"]


FOLLOW_ONE_SLOT = ["--input", "in/*.txt", "--follow", "--max-open-files", "1"]
# No timer save meanwhile: its temp file could take the freed inode number first.
NO_TIMER_SAVE = ["--poll-interval", "0.05", "--checkpoint-interval", "3600"]


@pytest.mark.parametrize("replacement", ["grown", "same size"])
def test_a_parked_file_deleted_and_its_inode_given_to_a_new_file_is_not_read_on(
    inputs: Path, replacement: str
) -> None:
    """Following two files with one slot, so a caught-up file is parked (closed until a scan
    brings news of it). Deleted while parked, and a new file given its inode number and name,
    holding the same first lines and more, or other lines of the same size: the new file is
    read whole, and the deleted one's records stay counted."""
    cwd = inputs.parent
    a = b"".join(b"%d\n" % n for n in range(1, 101))
    b = b"".join(b"%d\n" % n for n in range(1000, 1051))
    (inputs / "a.txt").write_bytes(a)
    (inputs / "b.txt").write_bytes(b)
    worker = WorkerProcess([*FOLLOW_ONE_SLOT, *NO_TIMER_SAVE], cwd)
    worker.wait_for("caught_up")
    caught_up = len([e for e in worker.events if e["event"] == "caught_up"])
    if replacement == "grown":
        new = a + b"".join(b"%d\n" % n for n in range(5000, 5010))
    else:
        new = a.replace(b"1", b"2")
    _delete_and_give_its_inode_to(inputs / "a.txt", inputs / "a.txt", new)
    _assert_removed(worker, "in/a.txt")
    _wait_for_more(worker, "caught_up", caught_up)
    assert _stop_and_total(worker) == _expected(a, b, new)


def test_a_resumed_file_deleted_while_waiting_for_a_slot_is_not_read_on(inputs: Path) -> None:
    """Resumed from a checkpoint, a file waits for the one slot while another is read; it is
    deleted meanwhile and a new file with its first lines and more is given its inode number
    and name: the new file is read whole, the deleted one's records stay counted."""
    cwd = inputs.parent
    a = b"".join(b"%d\n" % n for n in range(1, 101))
    b = b"".join(b"%d\n" % n for n in range(1000, 1101))
    (inputs / "a.txt").write_bytes(a)
    (inputs / "b.txt").write_bytes(b)
    assert cli(GLOB, cwd).returncode == 0
    more = b"".join(b"%d\n" % n for n in range(20_000))
    with (inputs / "a.txt").open("ab") as grown:
        grown.write(more)
    # a.txt is read first (its name sorts first), slowly; b.txt waits for the slot.
    worker = WorkerProcess([*FOLLOW_ONE_SLOT, *NO_TIMER_SAVE, "--max-rate", "4000"], cwd)
    worker.wait_for("checkpoint_loaded")
    time.sleep(1)  # start-up paired b.txt with its saved state: it waits for the slot now
    new = b + b"".join(b"%d\n" % n for n in range(7000, 7010))
    _delete_and_give_its_inode_to(inputs / "b.txt", inputs / "b.txt", new)
    _assert_removed(worker, "in/b.txt")
    expected = _expected(a + more, b, new)
    # Caught up with every record: a.txt can catch up before a scan has found the new b.txt.
    worker.wait_for("caught_up", timeout=60, records=expected[1])
    assert _stop_and_total(worker) == expected


def test_files_waiting_for_a_slot_are_saved_by_inode_and_never_take_a_read_files_name(
    inputs: Path,
) -> None:
    """More files than slots: a file still waiting for one at a stop is saved with its inode,
    not only its name. Rotated while stopped, so that a partly read file (closed, out of every
    pattern meanwhile) comes back under a waiting file's old name: each resumes as itself, and
    nothing is counted twice."""
    cwd = inputs.parent
    lines = b"".join(b"%d\n" % n for n in range(1, 1001))
    for index in (1, 2, 3):
        (inputs / f"n.txt.{index}").write_bytes(lines)
    paced = ["--input", "in/n.txt*", "--follow", "--max-open-files", "1", "--max-rate", "200"]
    first = WorkerProcess(paced, cwd)
    first.wait_for("checkpoint_saved", records=lambda r: r > 0)
    assert _stop_and_total(first)[1] < 1000  # n.txt.1 partly read; .2 and .3 wait for the slot
    saved = json.loads((cwd / "checkpoint.json").read_text())["files"]
    assert all(entry["inode"] is not None for entry in saved), saved
    (inputs / "n.txt.1").rename(inputs / "held")  # out of every pattern: kept closed
    second = WorkerProcess(paced, cwd)
    second.wait_for("checkpoint_loaded")
    time.sleep(0.5)  # n.txt.2 is read, n.txt.3 waits for the slot again
    _stop_and_total(second)
    (inputs / "n.txt.3").rename(inputs / "n.txt.4")
    (inputs / "held").rename(inputs / "n.txt.3")  # the partly read file, under a waiting name
    assert cli(["run", "--input", "in/n.txt*"], cwd).returncode == 0
    assert _result(cwd) == _expected(lines, lines, lines)


def test_a_file_out_of_every_pattern_while_stopped_resumes_where_it_was_when_back(
    tmp_path: Path,
) -> None:
    """Renamed out of the glob between two runs, then back before a third: the second run keeps
    its state (closed, its records counted), the third reads on from it. Nothing twice."""
    (tmp_path / "in").mkdir()
    a = b"".join(b"%d\n" % n for n in range(1, 101))
    b = b"".join(b"%d\n" % n for n in range(1, 11))
    (tmp_path / "in" / "a.txt").write_bytes(a)
    (tmp_path / "in" / "b.txt").write_bytes(b)
    glob = ["run", "--input", "in/*.txt"]
    assert cli(glob, tmp_path).returncode == 0
    (tmp_path / "in" / "b.txt").rename(tmp_path / "in" / "b.bak")
    out = cli(glob, tmp_path)
    assert out.returncode == 0
    [removed] = [e for e in events_of(out.stdout) if e["event"] == "file_removed"]
    assert (removed["path"], removed["reason"]) == ("in/b.txt", "missing")
    assert _result(tmp_path) == _expected(a, b)
    (tmp_path / "in" / "b.bak").write_bytes(b + b"1000\n")  # it grew meanwhile, too
    (tmp_path / "in" / "b.bak").rename(tmp_path / "in" / "b.txt")
    back = cli(glob, tmp_path)
    assert back.returncode == 0
    assert not [e for e in events_of(back.stdout) if e["event"] == "file_discovered"]
    assert _result(tmp_path) == _expected(a, b + b"1000\n")


def test_a_glob_narrowed_then_widened_again_reads_nothing_twice(tmp_path: Path) -> None:
    """Half of a file read under `in/*.txt`, the worker run on one file only, then on the glob
    again: the files the narrower run did not find resume where they were."""
    (tmp_path / "in").mkdir()
    parts = [b"".join(b"%d\n" % (n * k) for n in range(1, 2001)) for k in (1, 3)]
    (tmp_path / "in" / "a.txt").write_bytes(parts[0])
    (tmp_path / "in" / "b.txt").write_bytes(parts[1])
    assert cli(["run", "--input", "in/*.txt"], tmp_path).returncode == 0
    with (tmp_path / "in" / "b.txt").open("ab") as grown:
        grown.write(b"5\n")
    assert cli(["run", "--input", "in/a.txt", "--input", "in/none-*.txt"], tmp_path).returncode == 0
    assert cli(["run", "--input", "in/*.txt"], tmp_path).returncode == 0
    assert _result(tmp_path) == _expected(parts[0], parts[1] + b"5\n")


def test_a_closed_file_is_forgotten_after_forget_closed_after_across_restarts(
    tmp_path: Path,
) -> None:
    """The time a missing file's state is kept counts from when it went missing, whatever
    the restarts: once past `forget_closed_after`, it leaves the checkpoint (its totals stay)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"1\n2\n")
    (tmp_path / "in" / "b.txt").write_bytes(b"10\n")
    glob = ["run", "--input", "in/*.txt", "--forget-closed-after", "1"]
    assert cli(glob, tmp_path).returncode == 0
    (tmp_path / "in" / "b.txt").unlink()
    assert cli(glob, tmp_path).returncode == 0
    kept = json.loads((tmp_path / "checkpoint.json").read_text())
    assert [(f["path"], f["closed"]) for f in kept["files"]] == [
        ("in/a.txt", False),
        ("in/b.txt", True),
    ]
    time.sleep(1.2)
    later = cli(glob, tmp_path)
    assert later.returncode == 0
    assert [e["path"] for e in events_of(later.stdout) if e["event"] == "file_forgotten"] == [
        "in/b.txt"
    ]
    forgotten = json.loads((tmp_path / "checkpoint.json").read_text())
    assert [f["path"] for f in forgotten["files"]] == ["in/a.txt"]
    assert (forgotten["sum"], forgotten["gone"]["sum"]) == (13, 10)


def test_a_closed_file_is_known_again_only_by_its_generation(
    inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed file's state (kept for when it comes back) with a generation, and a file of its
    inode and first bytes whose generation cannot be read: not taken for it. An open one is,
    as without generations."""
    path = inputs / "a.txt"
    path.write_bytes(b"1\n2\n3\n")
    saved = state_of(path, b"1\n2\n3\n", _generation(path))
    monkeypatch.setattr(source, "generation_of", lambda _fd: None)
    closed = FileState(
        saved.path,
        saved.inode,
        saved.identity,
        saved.position,
        closed=True,
        generation=saved.generation,
        closed_at=1.0,
    )
    assert match_saved_files([closed], _found(path)).gone == [closed]
    assert [s for _, _, s in match_saved_files([saved], _found(path)).resumed] == [saved]


def test_without_generations_a_file_missing_at_a_start_is_folded_at_once() -> None:
    """Where the file system keeps no generation (tmpfs here), a new file given a deleted
    file's inode number could pass for it: a file missing at a start is folded into the totals
    of gone files at once, not kept closed, and its records stay counted."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or _generations_kept(shm):
        pytest.skip("needs /dev/shm on a file system without inode generations (tmpfs)")
    with tempfile.TemporaryDirectory(dir=shm) as where:
        cwd = Path(where)
        (cwd / "in").mkdir()
        (cwd / "in" / "a.txt").write_bytes(b"1\n2\n")
        (cwd / "in" / "b.txt").write_bytes(b"10\n")
        glob = ["run", "--input", "in/*.txt"]
        assert cli(glob, cwd).returncode == 0
        (cwd / "in" / "b.txt").unlink()
        assert cli(glob, cwd).returncode == 0
        saved = json.loads((cwd / "checkpoint.json").read_text())
        assert [f["path"] for f in saved["files"]] == ["in/a.txt"]
        assert (saved["sum"], saved["gone"]["sum"]) == (13, 10)


def test_a_library_save_keeps_what_the_worker_knows_of_a_file(inputs: Path) -> None:
    """`save_checkpoint(input=...)` on a worker's glob checkpoint replaces the file's position
    only: its inode's generation stays, so the file renamed out while stopped and back under
    the pattern while followed is the same file again, not read a second time from 0."""
    from service import load_checkpoint, save_checkpoint

    cwd = inputs.parent
    a, b = b"".join(b"%d\n" % i for i in range(1, 101)), b"".join(b"%d\n" % i for i in range(11))
    (inputs / "a.txt").write_bytes(a)
    (inputs / "b.txt").write_bytes(b)
    assert cli(GLOB, cwd).returncode == 0
    before = json.loads((cwd / "checkpoint.json").read_text())["files"]
    offset, running_sum = load_checkpoint(cwd / "checkpoint.json", input=inputs / "a.txt")
    save_checkpoint(offset, running_sum, cwd / "checkpoint.json", input=inputs / "a.txt")
    after = json.loads((cwd / "checkpoint.json").read_text())["files"]
    assert sorted((f["path"], f["generation"]) for f in after) == sorted(
        (f["path"], f["generation"]) for f in before
    )
    os.rename(inputs / "a.txt", cwd / "a.txt.old")
    worker = WorkerProcess([*GLOB[1:], "--follow", "--poll-interval", "0.1"], cwd)
    worker.wait_for("caught_up", timeout=30)
    os.rename(cwd / "a.txt.old", inputs / "a.txt")
    time.sleep(1.0)  # ten scans: it is known again, and nothing of it is read again
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert _result(cwd) == _expected(a, b)


def test_a_library_save_of_a_file_rotated_in_keeps_the_entry_of_the_one_rotated_away(
    inputs: Path,
) -> None:
    """A worker's checkpoint of `numbers.txt*`; while it is stopped, `numbers.txt` is rotated to
    `numbers.txt.1` and a new `numbers.txt` made. To the library the new file is one the
    checkpoint does not hold (0, 0), and its save adds its entry beside the rotated file's,
    whose records stay counted after it is deleted."""
    from service import load_checkpoint, number_stream, save_checkpoint

    cwd = inputs.parent
    old, new = (
        b"".join(b"%d\n" % i for i in range(1, 101)),
        b"".join(b"%d\n" % i for i in range(1000, 1010)),
    )
    (inputs / "numbers.txt").write_bytes(old)
    assert cli(GLOB, cwd).returncode == 0
    os.rename(inputs / "numbers.txt", inputs / "numbers.txt.1")
    (inputs / "numbers.txt").write_bytes(new)
    with contextlib.chdir(cwd):  # named as the worker names it
        named = "in/numbers.txt"
        assert tuple(load_checkpoint(input=named)) == (0, 0)
        streamed = list(number_stream(named, 0))
        save_checkpoint(streamed[-1][0], sum(number for _, number in streamed), input=named)
    (inputs / "numbers.txt.1").unlink()
    assert cli(GLOB, cwd).returncode == 0
    assert _result(cwd) == _expected(old, new)
