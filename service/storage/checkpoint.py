"""The checkpoint: its format, the identities it carries, and the atomic store.

Rule 1: a checkpoint is only ever replaced whole (`atomic.atomic_write`), never edited in place.
Rule 2: a checkpoint that cannot be trusted (torn, corrupt, wrong shape, a checksum that does not
        match, unknown version) is reported and left exactly as it is: never a silent restart.
Rule 3: a file's identity is its inode (never its device number, which a remount changes), its
        generation where the file system keeps one (a reused inode number gets a new one), plus
        hashes of the first KiB and of the last KiB of the consumed prefix, read from the very file
        descriptor the worker reads. It costs the same at any offset and lets the file grow.
Rule 4: format 2 holds every file's state as of one instant, the totals over all of them (files
        that are gone included) at the top level, and a SHA-256 of the file's own bytes: any
        changed byte makes it corrupt. Format 1 (one file, no checksum) is still read.
Rule 5: a save costs what changed: each file's entry is one line of JSON, made once per
        `FileState` and kept with it, so only a file whose state is a new one is encoded. The
        text is the same JSON whatever its layout, so every reader reads every checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.decimal_text import decimal_of, exact_json, int_of
from service.core.position import Position
from service.errors import CheckpointCorrupt, CheckpointWriteFailed
from service.storage.atomic import atomic_write, read_regular_file, replaceable

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointStore",
    "FileState",
    "InputIdentity",
    "generation_of",
    "identify_input",
    "require_directory_of",
    "require_regular_file",
    "same_generation",
    "sealed",
    "total_of",
    "write_json",
]

CHECKPOINT_VERSION = 2
# A checkpoint of 100,000 files is about 37 MB; anything far beyond is not one.
MAX_CHECKPOINT_BYTES = 256 << 20
READABLE_VERSIONS = (1, 2)
IDENTITY_WINDOW = 1024
_CHECKSUM_KEY = b'"checksum": "sha256:'
_CHECKSUM_HEX = 64
_COUNTS = ("offset", "lines", "records", "bad_records")


@dataclass(frozen=True, slots=True)
class InputIdentity:
    """Hashes of the first and last `IDENTITY_WINDOW` bytes before a file's position."""

    head_sha256: str
    tail_sha256: str


def identify_input(fd: int, offset: int) -> InputIdentity:
    """The identity of a file's first `offset` bytes, read with pread (blocking, cheap)."""
    head = os.pread(fd, min(offset, IDENTITY_WINDOW), 0)
    tail_start = max(0, offset - IDENTITY_WINDOW)
    tail = os.pread(fd, offset - tail_start, tail_start)
    return InputIdentity(hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest())


_LATEST_TIME = 1e11  # seconds since the epoch: past the year 5000, no clock's reading

# FS_IOC_GETVERSION, _IOR('v', 1, long): the inode's generation, written as a C int. The number
# is the generic layout's (x86, ARM, RISC-V); elsewhere (POWER, MIPS, SPARC) the same bits ask
# for another ioctl, so the generation is not asked for there.
_FS_IOC_GETVERSION = (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1
_GENERIC_IOCTLS = os.uname().machine in ("x86_64", "i686", "i386", "aarch64", "armv7l", "riscv64")


def generation_of(fd: int) -> int | None:
    """The generation of the file open as `fd`: ext4, XFS and Btrfs give an inode a new one
    each time its number is used again, so (inode, generation) tells a file from a later one
    that took its number. None where the file system keeps none (tmpfs, overlayfs, NFS)."""
    if not _GENERIC_IOCTLS:
        return None
    answer = bytearray(struct.calcsize("l"))
    try:
        fcntl.ioctl(fd, _FS_IOC_GETVERSION, answer, True)
    except OSError:
        return None
    return int.from_bytes(answer[: struct.calcsize("i")], sys.byteorder)


def same_generation(known: int | None, now: int | None) -> bool | None:
    """Whether two generations of one inode number show the same file; None when either is
    not known (the file system keeps none, or a state saved without one)."""
    return None if known is None or now is None else known == now


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def total_of(positions: Iterable[Position]) -> Position:
    """The sum of positions, field by field (one pass, one new Position: cheap for 100,000)."""
    offset = lines = records = bad_records = total = 0
    for p in positions:
        offset += p.offset
        lines += p.lines
        records += p.records
        bad_records += p.bad_records
        total += p.sum
    return Position(offset, lines, records, bad_records, total)


@dataclass(frozen=True, slots=True)
class FileState:
    """One file's resume state: its position, and what identifies it (derived from it alone)."""

    path: str
    inode: int | None  # None when read from a format-1 checkpoint: matched by path then
    identity: InputIdentity | None  # of the consumed prefix; None when nothing is consumed
    position: Position
    closed: bool = False  # out of every pattern, or missing, and closed: kept so it is never reread
    generation: int | None = None  # the inode's generation (`generation_of`); None: unknown
    closed_at: float | None = None  # when it was closed (seconds since the epoch), if it is
    _line: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "inode": self.inode,
            **asdict(self.position),
            "identity": asdict(self.identity) if self.identity else None,
            "closed": self.closed,
            "generation": self.generation,
            "closed_at": self.closed_at,
        }

    def to_json_line(self) -> str:
        """`to_json()` as one line of JSON text, made once per state: a partition hands out the
        same state while it is unchanged, so a save encodes only the files that changed."""
        if self._line is None:
            object.__setattr__(self, "_line", self._encode_line())
        assert self._line is not None
        return self._line

    def _encode_line(self) -> str:
        p, identity = self.position, self.identity
        inode = "null" if self.inode is None else _integer_text(self.inode)
        hashes = (
            "null"
            if identity is None
            else f'{{"head_sha256": {json.dumps(identity.head_sha256)}, '
            f'"tail_sha256": {json.dumps(identity.tail_sha256)}}}'
        )
        return (
            f'{{"path": {json.dumps(self.path)}, "inode": {inode}, '
            f'"offset": {_integer_text(p.offset)}, "lines": {_integer_text(p.lines)}, '
            f'"records": {_integer_text(p.records)}, '
            f'"bad_records": {_integer_text(p.bad_records)}, "sum": {_integer_text(p.sum)}, '
            f'"identity": {hashes}, "closed": {"true" if self.closed else "false"}, '
            f'"generation": {json.dumps(self.generation)}, '
            f'"closed_at": {json.dumps(self.closed_at)}}}'
        )

    @classmethod
    def from_json(cls, data: object) -> FileState:
        if not isinstance(data, dict):
            raise ValueError("a file entry is not a JSON object")
        inode = data.get("inode")
        if inode is not None and (type(inode) is not int or inode < 0):
            raise ValueError(f"'inode' must be a non-negative integer, not {inode!r}")
        if not isinstance(data.get("path"), str) or not isinstance(data.get("closed"), bool):
            raise ValueError("a file entry needs a string 'path' and a boolean 'closed'")
        generation = data.get("generation")  # absent from checkpoints written before it was kept
        if generation is not None and (type(generation) is not int or generation < 0):
            raise ValueError(f"'generation' must be a non-negative integer, not {generation!r}")
        closed_at = data.get("closed_at")
        if closed_at is not None and not (
            type(closed_at) in (int, float) and 0 <= closed_at <= _LATEST_TIME
        ):
            raise ValueError(f"'closed_at' must be a time in seconds, not {closed_at!r}")
        position = _position_of(data)
        identity = _identity_of(data, position)
        return cls(data["path"], inode, identity, position, data["closed"], generation, closed_at)


def _position_of(data: dict[str, Any]) -> Position:
    counts = {}
    for name in _COUNTS:
        value = data.get(name)
        if type(value) is not int or value < 0:
            raise ValueError(f"{name!r} must be a non-negative integer, not {value!r}")
        counts[name] = value
    total = data.get("sum")
    if type(total) is not int:
        raise ValueError(f"'sum' must be an integer, not {total!r}")
    if counts["records"] + counts["bad_records"] > counts["lines"]:
        raise ValueError("more records than lines")
    if counts["offset"] < counts["lines"]:
        raise ValueError("fewer bytes than lines")
    return Position(sum=total, **counts)


def _identity_of(data: dict[str, Any], position: Position) -> InputIdentity | None:
    identity = data.get("identity")
    if position.offset == 0 and identity is None:
        return None
    if not (
        isinstance(identity, dict)
        and all(isinstance(identity.get(k), str) for k in ("head_sha256", "tail_sha256"))
    ):
        raise ValueError("'identity' must hold head_sha256 and tail_sha256")
    return InputIdentity(identity["head_sha256"], identity["tail_sha256"])


@dataclass(frozen=True)
class Checkpoint:
    """What a run has consumed of its input, file by file, and what it all added up to.

    `position` is the total over every file, gone ones included (`gone` holds theirs). A
    checkpoint of one file may be given as its position and identity alone: `files` then
    defaults to that one file at `input`.
    """

    position: Position
    input: str
    identity: InputIdentity | None = None
    completed: bool = False
    updated_at: str = field(default_factory=_now)
    files: tuple[FileState, ...] = ()
    gone: Position = field(default_factory=Position)

    def __post_init__(self) -> None:
        if not self.files and self.gone == Position() and self.position != Position():
            single = FileState(self.input, None, self.identity, self.position)
            object.__setattr__(self, "files", (single,))

    def _head(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "input": self.input,
            **asdict(self.position),
            "completed": self.completed,
            "updated_at": self.updated_at,
            "gone": asdict(self.gone),
        }

    def to_json(self) -> dict[str, Any]:
        return self._head() | {"files": [f.to_json() for f in self.files]}

    def encode(self, file_lines: list[str]) -> list[bytes]:
        """The sealed text of this checkpoint in pieces (never copied into one), its files
        given as their lines of JSON; the checksum, the last key, covers them all."""
        head = self._head() | {"files": _FILES_TOKEN} | _ZERO_CHECKSUM
        before, after = (_dumps(head) + "\n").encode().split(json.dumps(_FILES_TOKEN).encode())
        files = "[\n    " + ",\n    ".join(file_lines) + "\n  ]" if file_lines else "[]"
        at = after.rindex(_CHECKSUM_KEY) + len(_CHECKSUM_KEY)
        pieces = [before, files.encode(), after[:at]]
        digest = hashlib.sha256()
        for piece in (*pieces, after[at:]):  # the checksum's digits are zeros in `after`
            digest.update(piece)
        return [*pieces, digest.hexdigest().encode(), after[at + _CHECKSUM_HEX :]]

    @classmethod
    def from_json(cls, data: object) -> Checkpoint:
        """Validate a decoded checkpoint of either version; raise ValueError naming a problem."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.get("version")
        if type(version) is not int or version not in READABLE_VERSIONS:  # true == 1.0 == 1
            raise ValueError(f"unknown version {version!r} (this worker reads versions 1 and 2)")
        for name, kind in (("input", str), ("completed", bool), ("updated_at", str)):
            if not isinstance(data.get(name), kind):
                raise ValueError(f"{name!r} must be a {kind.__name__}")
        position = _position_of(data)
        if version == 1:
            identity = _identity_of(data, position)
            return cls(position, data["input"], identity, data["completed"], data["updated_at"])
        entries = data.get("files")
        gone = data.get("gone")
        if not isinstance(entries, list) or not isinstance(gone, dict):
            raise ValueError("'files' must be a list and 'gone' an object")
        files = tuple(FileState.from_json(entry) for entry in entries)
        gone_position = _position_of(gone)
        if total_of([gone_position, *(f.position for f in files)]) != position:
            raise ValueError("the totals are not the sum of the files'")
        return cls(
            position,
            data["input"],
            files[0].identity if len(files) == 1 else None,
            data["completed"],
            data["updated_at"],
            files,
            gone_position,
        )


def _integer_text(value: int) -> str:
    """Decimal text of an integer of any length (subquadratic beyond 64 bits)."""
    return str(value) if value.bit_length() <= 64 else decimal_of(value)


def _dumps(document: dict[str, Any]) -> str:
    """JSON text of a document whose integers (at any depth) may be of any length."""
    return exact_json(document, indent=2)


def _seal(text: bytes) -> bytes:
    """`text`, whose checksum digits are zeros, with the checksum of that very text in them."""
    digest = hashlib.sha256(text).hexdigest().encode()
    at = text.rindex(_CHECKSUM_KEY) + len(_CHECKSUM_KEY)
    return text[:at] + digest + text[at + _CHECKSUM_HEX :]


_ZERO_CHECKSUM = {"checksum": "sha256:" + "0" * _CHECKSUM_HEX}
_FILES_TOKEN = "\0files\0"


def sealed(document: dict[str, Any]) -> bytes:
    """The document's text ending in a checksum of that very text (its digits zeroed)."""
    return _seal(_dumps(document | _ZERO_CHECKSUM).encode() + b"\n")


def _verify_seal(raw: bytes) -> None:
    """Raise ValueError unless `raw` ends in the checksum of its own bytes."""
    at = raw.rfind(_CHECKSUM_KEY)
    if at < 0:
        raise ValueError("no checksum")
    at += len(_CHECKSUM_KEY)
    claimed = raw[at : at + _CHECKSUM_HEX]
    zeroed = raw[:at] + b"0" * _CHECKSUM_HEX + raw[at + _CHECKSUM_HEX :]
    if len(claimed) != _CHECKSUM_HEX or hashlib.sha256(zeroed).hexdigest().encode() != claimed:
        raise ValueError("checksum mismatch: the file was changed after it was written")


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomically replace `path` with a JSON document, or raise CheckpointWriteFailed."""
    _write(path, [(_dumps(document) + "\n").encode()])


def require_directory_of(path: Path) -> None:
    """Raise CheckpointWriteFailed unless `path` could be written later: found at start-up,
    not after the whole input was read."""
    require_regular_file(path)
    directory = path.parent
    if not directory.is_dir():
        problem = "does not exist" if not directory.exists() else "is not a directory"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = "is not writable"
    else:
        return
    raise CheckpointWriteFailed(f"cannot write {path}: its directory {directory} {problem}")


def require_regular_file(path: Path) -> None:
    """Raise CheckpointWriteFailed, at start-up, where a save of `path` would: what is there
    (through its links) is /dev/null, a FIFO or a directory (atomic.py, Rule 5)."""
    try:
        replaceable(path)
    except OSError as error:
        raise CheckpointWriteFailed(f"cannot write {path}: {error.strerror}") from None


def _write(path: Path, pieces: list[bytes]) -> None:
    try:
        atomic_write(path, pieces)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CheckpointWriteFailed(
            f"cannot write {path}: {reason}; the previous file is left intact"
        ) from error


class CheckpointStore:
    """Loads and atomically saves the checkpoint file (blocking calls)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        """The saved checkpoint, None if there is none; CheckpointCorrupt if it is unusable."""
        try:
            raw = read_regular_file(self.path, MAX_CHECKPOINT_BYTES)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CheckpointCorrupt(
                f"cannot read checkpoint {self.path}: {error.strerror}"
            ) from error
        try:
            data = json.loads(raw, parse_int=int_of)
            if isinstance(data, dict) and data.get("version") == CHECKPOINT_VERSION:
                _verify_seal(raw)
                del data["checksum"]
            return Checkpoint.from_json(data)
        except (ValueError, UnicodeDecodeError, RecursionError, KeyError) as error:
            if not raw.strip(b"\0 \n"):
                detail = "empty file"
            elif isinstance(error, UnicodeDecodeError):  # json guesses UTF-16 or 32 from NULs
                detail = "not UTF-8 text"
            else:
                detail = str(error).splitlines()[0]
            raise CheckpointCorrupt(
                f"checkpoint {self.path} is corrupt ({detail}); it was left untouched: "
                "fix it, or run `checkpoint-worker reset` to start over"
            ) from error

    def save(self, checkpoint: Checkpoint) -> None:
        _write(self.path, checkpoint.encode([f.to_json_line() for f in checkpoint.files]))
