"""The checkpoint store: exact round trips, atomic writes, and corrupt files reported untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.position import Position
from service.errors import CheckpointCorrupt, CheckpointWriteFailed
from service.storage.atomic import remove_left_temp_files, temp_files_of
from service.storage.checkpoint import (
    IDENTITY_WINDOW,
    Checkpoint,
    CheckpointStore,
    FileState,
    InputIdentity,
    identify_input,
    sealed,
    total_of,
)

FIXTURES = Path(__file__).parent / "fixtures"
CORRUPT = sorted((FIXTURES / "checkpoints").glob("*.json"))
VALID = FIXTURES / "valid_checkpoint.json"

IDENTITY = InputIdentity("a" * 64, "b" * 64)
SAMPLE = Checkpoint(
    Position(offset=120, lines=30, records=28, bad_records=1, sum=-12345),
    "numbers.txt",
    IDENTITY,
    completed=False,
    updated_at="2024-05-01T12:00:00.000Z",
)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "checkpoint.json")


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "checkpoint",
    [
        pytest.param(SAMPLE, id="sample"),
        pytest.param(Checkpoint(Position(), "numbers.txt", None), id="nothing-consumed"),
        pytest.param(
            Checkpoint(Position(5, 2, 1, 1, 10**40), "/data/n.txt", IDENTITY, completed=True),
            id="completed-big-sum",
        ),
        pytest.param(
            Checkpoint(Position(2**70, 2**69, 2**68, 2**68, -(10**300)), "x", IDENTITY),
            id="huge-counts",
        ),
    ],
)
def test_round_trip(checkpoint: Checkpoint, store: CheckpointStore) -> None:
    """What is saved loads back equal, field for field."""
    store.save(checkpoint)
    assert store.load() == checkpoint


def test_saved_file_is_the_documented_json(store: CheckpointStore) -> None:
    """The file is a JSON object with offset, records, bad_records, an integer sum and a version."""
    store.save(SAMPLE)
    document = json.loads(store.path.read_bytes())
    assert {k: document[k] for k in ("offset", "records", "bad_records", "sum")} == {
        "offset": 120,
        "records": 28,
        "bad_records": 1,
        "sum": -12345,
    }
    assert document["version"] == 2
    assert document["checksum"].startswith("sha256:")
    (entry,) = document["files"]
    assert entry["identity"] == {"head_sha256": "a" * 64, "tail_sha256": "b" * 64}
    assert {k: entry[k] for k in ("path", "offset", "records", "sum")} == {
        "path": "numbers.txt",
        "offset": 120,
        "records": 28,
        "sum": -12345,
    }


def test_sum_past_the_int_string_limit(store: CheckpointStore, default_int_limit: None) -> None:
    """A sum longer than Python's default int-string limit saves and loads exactly."""
    checkpoint = Checkpoint(Position(10, 1, 1, 0, -(7**6000)), "numbers.txt", IDENTITY)
    store.save(checkpoint)
    assert store.load() == checkpoint


def test_load_of_a_missing_checkpoint_is_none(store: CheckpointStore) -> None:
    """No checkpoint file means no checkpoint: None, and nothing created."""
    assert store.load() is None
    assert listing(store.path.parent) == {}


def test_valid_fixture_loads() -> None:
    """The file the corrupt fixtures derive from is itself valid, so each is wrong in one way."""
    loaded = CheckpointStore(VALID).load()
    assert loaded is not None
    assert loaded.position == Position(offset=120, lines=30, records=28, bad_records=1, sum=12345)


# --- atomic writes --------------------------------------------------------------------------


def test_save_leaves_no_temporary_files(store: CheckpointStore) -> None:
    """After saves the directory holds the checkpoint and nothing else."""
    for offset in range(0, 50, 10):
        store.save(Checkpoint(Position(offset, offset, offset), "n", IDENTITY))
    assert sorted(os.listdir(store.path.parent)) == ["checkpoint.json"]
    assert temp_files_of(store.path) == []


def test_a_temporary_file_being_written_is_never_removed_as_left_behind(tmp_path: Path) -> None:
    """Another process holding its temporary file (a write in progress) keeps it; one nobody
    holds (a crashed write's) is removed; a neighbour file's (`checkpoint.json.b`) is not ours."""
    target = tmp_path / "checkpoint.json"
    held, left, neighbours = (
        tmp_path / name
        for name in (
            ".checkpoint.json.held_0ab.tmp",
            ".checkpoint.json.left_1cd.tmp",
            ".checkpoint.json.b.left_2ef.tmp",
        )
    )
    for temp in (held, left, neighbours):
        temp.write_text("partial")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(held)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        assert remove_left_temp_files(target) == [left]
        assert sorted(temp_files_of(target)) == [held]
        assert neighbours.exists()
    finally:
        holder.kill()
        holder.communicate()
    assert remove_left_temp_files(target) == [held]


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "rb")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_save_replaces_the_file_never_rewrites_it(store: CheckpointStore) -> None:
    """Each save is a new file renamed over the old one, never an edit in place."""
    store.save(SAMPLE)
    with store.path.open("rb") as old:  # an open reader keeps seeing the old file, whole
        store.save(Checkpoint(Position(999, 9, 9), "other", IDENTITY))
        assert json.loads(old.read())["offset"] == 120
    assert json.loads(store.path.read_bytes())["offset"] == 999


# --- corrupt checkpoints --------------------------------------------------------------------


def test_there_are_corrupt_fixtures() -> None:
    """The corrupt fixtures are found, so the test over them cannot pass vacuously."""
    assert len(CORRUPT) >= 25


def test_bytes_json_cannot_read_as_text_is_said_to_be_not_utf8(tmp_path: Path) -> None:
    """NUL bytes make json guess UTF-16: the message says what the file is not, never a
    codec's name."""
    path = tmp_path / "checkpoint.json"
    path.write_bytes(b"\x00{\x00}\x00")
    with pytest.raises(CheckpointCorrupt, match=r"corrupt \(not UTF-8 text\)") as caught:
        CheckpointStore(path).load()
    assert "codec" not in caught.value.message


@pytest.mark.parametrize("fixture", CORRUPT, ids=[p.stem for p in CORRUPT])
def test_corrupt_fixture_is_reported_and_left_untouched(fixture: Path, tmp_path: Path) -> None:
    """Each torn, zero-filled, wrong-shape or unknown-version file raises CheckpointCorrupt."""
    path = tmp_path / "checkpoint.json"
    shutil.copyfile(fixture, path)
    before = listing(tmp_path)
    with pytest.raises(CheckpointCorrupt) as caught:
        CheckpointStore(path).load()
    assert str(path) in caught.value.message
    assert caught.value.exit_code == 1
    assert "\n" not in caught.value.message
    assert listing(tmp_path) == before


def test_checkpoint_cut_at_every_byte(store: CheckpointStore) -> None:
    """A checkpoint cut short anywhere is reported, never read as a smaller or empty state."""
    store.save(SAMPLE)
    whole = store.path.read_bytes()
    for cut in range(len(whole)):
        store.path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointCorrupt):
            store.load()
        assert store.path.read_bytes() == whole[:cut]


def test_checkpoint_zero_filled_from_every_byte(store: CheckpointStore) -> None:
    """A checkpoint whose end became zeros (a crash before the data reached disk) is reported."""
    store.save(SAMPLE)
    whole = store.path.read_bytes()
    for cut in range(len(whole)):
        store.path.write_bytes(whole[:cut] + bytes(len(whole) - cut))
        with pytest.raises(CheckpointCorrupt):
            store.load()


WRONG_COUNTS = [
    pytest.param(field, value, id=f"{field}={value!r}")
    for field in ("offset", "lines", "records", "bad_records", "sum")
    for value in (-1, True, False, 1.0, "1", None, [1])
    if not (field == "sum" and value == -1)  # the one field that may be negative
]


def version_1(checkpoint: Checkpoint) -> dict[str, Any]:
    """The format-1 document of a one-file checkpoint."""
    document = checkpoint.to_json()
    (entry,) = document.pop("files")
    del document["gone"]
    return document | {"version": 1, "identity": entry["identity"]}


def write_version(version: int, store: CheckpointStore, document: dict[str, Any]) -> None:
    """Write a document as a checkpoint of that version: format 2 sealed with its checksum."""
    if version == 1:
        store.path.write_text(json.dumps(document))
    else:
        store.path.write_bytes(sealed(document))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("field", "value"), WRONG_COUNTS)
def test_wrong_typed_counts(field: str, value: Any, version: int, store: CheckpointStore) -> None:
    """Counts must be JSON integers (non-negative, except the sum); anything else is corrupt."""
    document = version_1(SAMPLE) if version == 1 else SAMPLE.to_json()
    write_version(version, store, document | {field: value})
    with pytest.raises(CheckpointCorrupt, match=field):
        store.load()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"records": 29, "bad_records": 2}, id="records-and-bad-exceed-lines"),
        pytest.param({"offset": 29}, id="fewer-bytes-than-lines"),
        pytest.param({"version": 3}, id="newer-version"),
        pytest.param({"version": 0}, id="older-version"),
        pytest.param({"version": True}, id="version-true"),
        pytest.param({"version": 1.0}, id="version-float"),
        pytest.param({"identity": None}, id="no-identity-after-progress"),
        pytest.param({"identity": {"head_sha256": "a" * 64}}, id="half-an-identity"),
    ],
)
def test_inconsistent_checkpoint(changes: dict[str, Any], store: CheckpointStore) -> None:
    """Format 1: counts that contradict each other, an unknown version or no identity: corrupt."""
    store.path.write_text(json.dumps(version_1(SAMPLE) | changes))
    with pytest.raises(CheckpointCorrupt):
        store.load()


def test_version_1_is_read_as_the_one_file_it_describes(store: CheckpointStore) -> None:
    """A format-1 checkpoint loads as one file at its input, with its identity and counts."""
    store.path.write_text(json.dumps(version_1(SAMPLE)))
    loaded = store.load()
    assert loaded == SAMPLE
    assert loaded is not None
    (entry,) = loaded.files
    assert (entry.path, entry.position, entry.identity) == (
        "numbers.txt",
        SAMPLE.position,
        IDENTITY,
    )


TWO_FILES = Checkpoint(
    Position(30, 3, 3, 0, 12),
    "data/*.txt",
    files=(
        FileState("data/a.txt", 11, IDENTITY, Position(10, 1, 1, 0, 5)),
        FileState(
            "data/b.txt",
            12,
            IDENTITY,
            Position(12, 1, 1, 0, 6),
            closed=True,
            generation=3217654901,
            closed_at=1714564800.5,
        ),
    ),
    gone=Position(8, 1, 1, 0, 1),
    updated_at="2024-05-01T12:00:00.000Z",
)


def test_many_files_round_trip_with_their_totals(store: CheckpointStore) -> None:
    """Every file's state and the gone files' totals load back equal; the top is their sum."""
    store.save(TWO_FILES)
    assert store.load() == TWO_FILES
    document = json.loads(store.path.read_bytes())
    assert (document["offset"], document["sum"], len(document["files"])) == (30, 12, 2)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"sum": 13}, id="totals-not-the-sum"),
        pytest.param({"files": {}}, id="files-not-a-list"),
        pytest.param({"gone": None}, id="no-gone-totals"),
    ],
)
def test_inconsistent_version_2(changes: dict[str, Any], store: CheckpointStore) -> None:
    """Format 2 with a valid checksum but contradicting content is still corrupt."""
    store.path.write_bytes(sealed(TWO_FILES.to_json() | changes))
    with pytest.raises(CheckpointCorrupt):
        store.load()


@pytest.mark.parametrize(
    "entry_change",
    [
        pytest.param({"inode": -1}, id="negative-inode"),
        pytest.param({"closed": "no"}, id="closed-not-a-boolean"),
        pytest.param({"identity": None}, id="no-identity-after-progress"),
        pytest.param({"records": 5}, id="records-exceed-lines"),
        pytest.param({"generation": -1}, id="negative-generation"),
        pytest.param({"generation": "7"}, id="generation-not-an-integer"),
        pytest.param({"closed_at": 10**400}, id="closed-at-past-any-clock"),
        pytest.param({"closed_at": -1.0}, id="closed-at-before-the-epoch"),
        pytest.param({"closed_at": "yesterday"}, id="closed-at-not-a-number"),
    ],
)
def test_a_bad_file_entry_is_corrupt(entry_change: dict[str, Any], store: CheckpointStore) -> None:
    """A file entry of the wrong shape makes the whole checkpoint corrupt."""
    document = TWO_FILES.to_json()
    document["files"][0] |= entry_change
    store.path.write_bytes(sealed(document))
    with pytest.raises(CheckpointCorrupt):
        store.load()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_detected(data: st.DataObject, tmp_path_factory: Any) -> None:
    """Any one byte of a format-2 checkpoint changed to any other value: corrupt, never used."""
    store = CheckpointStore(tmp_path_factory.mktemp("flip") / "checkpoint.json")
    store.save(TWO_FILES)
    whole = store.path.read_bytes()
    at = data.draw(st.integers(0, len(whole) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != whole[at]))
    store.path.write_bytes(whole[:at] + bytes([value]) + whole[at + 1 :])
    with pytest.raises(CheckpointCorrupt):
        store.load()


def test_a_flipped_digit_in_a_sum_is_detected(store: CheckpointStore) -> None:
    """The case that format 1 missed: a valid JSON checkpoint with one digit of a sum changed."""
    store.save(SAMPLE)
    store.path.write_bytes(store.path.read_bytes().replace(b"-12345", b"-12346"))
    with pytest.raises(CheckpointCorrupt, match="checksum"):
        store.load()


def test_unreadable_checkpoint(store: CheckpointStore) -> None:
    """A checkpoint path that cannot be read (here, a directory) is reported, not ignored."""
    store.path.mkdir()
    with pytest.raises(CheckpointCorrupt) as caught:
        store.load()
    assert str(store.path) in caught.value.message


# --- failed writes --------------------------------------------------------------------------


def test_save_over_a_directory_fails_cleanly(store: CheckpointStore) -> None:
    """A save that cannot rename over its target raises CheckpointWriteFailed, leaving no debris."""
    store.path.mkdir()
    (store.path / "inside").write_text("kept")
    with pytest.raises(CheckpointWriteFailed) as caught:
        store.save(SAMPLE)
    assert str(store.path) in caught.value.message
    assert caught.value.exit_code == 1
    assert (store.path / "inside").read_text() == "kept"
    assert sorted(os.listdir(store.path.parent)) == ["checkpoint.json"]


def test_save_into_a_missing_directory_fails(tmp_path: Path) -> None:
    """A save into a directory that does not exist raises CheckpointWriteFailed."""
    store = CheckpointStore(tmp_path / "gone" / "checkpoint.json")
    with pytest.raises(CheckpointWriteFailed):
        store.save(SAMPLE)
    assert not (tmp_path / "gone").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_save_into_a_read_only_directory_keeps_the_old_checkpoint(store: CheckpointStore) -> None:
    """Without write permission the save fails and the previous checkpoint stays intact."""
    store.save(SAMPLE)
    before = store.path.read_bytes()
    store.path.parent.chmod(0o555)
    try:
        with pytest.raises(CheckpointWriteFailed):
            store.save(Checkpoint(Position(999, 9, 9), "other", IDENTITY))
    finally:
        store.path.parent.chmod(0o755)
    assert store.path.read_bytes() == before
    assert temp_files_of(store.path) == []


_SAVE_PAST_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from service.storage.checkpoint import Checkpoint, CheckpointStore, InputIdentity
from service.errors import CheckpointWriteFailed
from service.core.position import Position

checkpoint = Checkpoint(Position(5, 1, 1, 0, 10**3000), "n", InputIdentity("a", "b"))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
try:
    CheckpointStore(Path(sys.argv[1])).save(checkpoint)
except CheckpointWriteFailed as error:
    print(error.message)
    sys.exit(3)
"""


def test_failed_write_keeps_the_old_checkpoint(store: CheckpointStore) -> None:
    """A write that fails midway (a file-size limit, like a full disk) keeps the old checkpoint."""
    store.save(SAMPLE)
    before = store.path.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_PAST_FILE_SIZE_LIMIT, str(store.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert str(store.path) in done.stdout
    assert store.path.read_bytes() == before
    assert sorted(os.listdir(store.path.parent)) == ["checkpoint.json"]
    assert store.load() == SAMPLE


# --- input identity -------------------------------------------------------------------------


def identity_of(path: Path, offset: int) -> InputIdentity:
    with path.open("rb") as handle:
        return identify_input(handle.fileno(), offset)


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_bytes(b"".join(b"%d\n" % (n * 7919 % 100_003) for n in range(4000)))
    return path


def changed(path: Path, at: int) -> Path:
    """A copy of `path` with the byte at `at` changed."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    copy = path.with_name(f"changed-at-{at}")
    copy.write_bytes(bytes(data))
    return copy


def test_identity_is_the_same_for_the_same_prefix(text: Path) -> None:
    """Inputs that share the consumed prefix have the same identity, whatever follows it."""
    offset = 10_000
    longer = text.with_name("longer")
    longer.write_bytes(text.read_bytes()[:offset] + b"something else\n")
    assert identity_of(text, offset) == identity_of(longer, offset)
    assert identity_of(text, offset) != identity_of(text, offset - 1)


@pytest.mark.parametrize("at", [0, 500, IDENTITY_WINDOW - 1])
def test_identity_sees_the_first_kib(text: Path, at: int) -> None:
    """A change in the first KiB of the consumed prefix changes the identity."""
    assert identity_of(text, 10_000) != identity_of(changed(text, at), 10_000)


@pytest.mark.parametrize("at", [10_000 - IDENTITY_WINDOW, 9_500, 10_000 - 1])
def test_identity_sees_the_last_kib(text: Path, at: int) -> None:
    """A change in the last KiB before the offset changes the identity."""
    assert identity_of(text, 10_000) != identity_of(changed(text, at), 10_000)


@pytest.mark.parametrize("at", [IDENTITY_WINDOW, 5_000, 10_000 - IDENTITY_WINDOW - 1, 10_000])
def test_identity_reads_only_its_windows(text: Path, at: int) -> None:
    """Bytes between the two windows, or after the offset, are not read: same identity."""
    assert identity_of(text, 10_000) == identity_of(changed(text, at), 10_000)


@pytest.mark.parametrize("offset", [0, 1, IDENTITY_WINDOW, 3 * IDENTITY_WINDOW])
def test_identity_of_a_short_prefix(text: Path, offset: int) -> None:
    """Near the start the windows overlap or are empty, and the identity is still defined."""
    first = identity_of(text, offset)
    assert first == identity_of(text, offset)
    if offset:
        assert first != identity_of(changed(text, offset - 1), offset)


def test_identity_cost_does_not_grow_with_the_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a 64 GiB offset of a sparse file the identity reads two KiB, like at any offset."""
    path = tmp_path / "sparse"
    offset = 64 << 30
    with path.open("wb") as handle:
        handle.write(b"head\n")
        handle.seek(offset - 5)
        handle.write(b"tail\n")
    read: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, length: int, at: int) -> bytes:
        data = real_pread(fd, length, at)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    identity = identity_of(path, offset)
    assert sum(read) <= 2 * IDENTITY_WINDOW
    monkeypatch.undo()
    head = b"head\n" + bytes(IDENTITY_WINDOW - 5)
    tail = bytes(IDENTITY_WINDOW - 5) + b"tail\n"
    assert identity == InputIdentity(sha256(head).hexdigest(), sha256(tail).hexdigest())


@given(
    path=st.text(),
    inode=st.none() | st.integers(0, 2**64),
    total=st.integers(-(10**60), 10**60),
    hashes=st.none() | st.tuples(st.text(), st.text()),
    closed=st.booleans(),
)
def test_a_files_line_of_json_is_its_entry(
    path: str, inode: int | None, total: int, hashes: tuple[str, str] | None, closed: bool
) -> None:
    """Each file's line in the checkpoint decodes to the very entry `to_json` describes."""
    identity = InputIdentity(*hashes) if hashes else None
    state = FileState(path, inode, identity, Position(9, 3, 2, 1, total), closed)
    assert json.loads(state.to_json_line()) == state.to_json()


def test_a_save_writes_each_files_latest_state(tmp_path: Path) -> None:
    """Lines kept with file states never stand for a state that changed since."""
    store = CheckpointStore(tmp_path / "checkpoint.json")
    files = [FileState(f"f{i}", i, None, Position()) for i in range(3)]
    for step in range(1, 4):
        consumed = InputIdentity(f"h{step}", f"t{step}")
        position = Position(step, 1, 1, 0, step)
        files[step % 3] = replace(files[step % 3], identity=consumed, position=position)
        checkpoint = Checkpoint(
            total_of(f.position for f in files), "f*", None, False, files=tuple(files)
        )
        store.save(checkpoint)
        assert store.load() == checkpoint
