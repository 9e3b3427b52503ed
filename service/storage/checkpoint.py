"""The checkpoint: its format, the identities it carries, and the atomic store.

Rule 1: a checkpoint is only ever replaced whole (`files.atomic_write`), never edited in place.
Rule 2: a checkpoint that cannot be trusted (torn, corrupt, wrong shape, a checksum that does not
        match, unknown version) is reported and left exactly as it is: never a silent restart.
Rule 3: a file's identity is its inode (never its device number, which a remount changes) plus
        hashes of the first KiB and of the last KiB of the consumed prefix, read from the very file
        descriptor the worker reads. It costs the same at any offset and lets the file grow.
Rule 4: format 2 holds every file's state as of one instant, the totals over all of them (files
        that are gone included) at the top level, and a SHA-256 of the file's own bytes: any
        changed byte makes it corrupt. Format 1 (one file, no checksum) is still read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.core.decimal_text import decimal_of, int_of
from service.core.position import Position
from service.errors import CheckpointCorrupt, CheckpointWriteFailed
from service.storage.atomic import atomic_write

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointStore",
    "FileState",
    "InputIdentity",
    "identify_input",
    "sealed",
    "total_of",
    "write_json",
]

CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)
IDENTITY_WINDOW = 1024
_CHECKSUM_KEY = b'"checksum": "sha256:'
_CHECKSUM_HEX = 64
_COUNTS = ("offset", "lines", "records", "bad_records")


@dataclass(frozen=True)
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def total_of(positions: list[Position] | tuple[Position, ...]) -> Position:
    """The sum of positions, field by field."""
    total = Position()
    for p in positions:
        total = total.advance(
            consumed=p.offset,
            lines=p.lines,
            records=p.records,
            bad_records=p.bad_records,
            total=p.sum,
        )
    return total


@dataclass(frozen=True)
class FileState:
    """One file's resume state: its position, and what identifies it (derived from it alone)."""

    path: str
    inode: int | None  # None when read from a format-1 checkpoint: matched by path then
    identity: InputIdentity | None  # of the consumed prefix; None when nothing is consumed
    position: Position
    closed: bool = False  # renamed out of every pattern and closed; kept so it is never reread

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "inode": self.inode,
            **asdict(self.position),
            "identity": asdict(self.identity) if self.identity else None,
            "closed": self.closed,
        }

    @classmethod
    def from_json(cls, data: object) -> FileState:
        if not isinstance(data, dict):
            raise ValueError("a file entry is not a JSON object")
        inode = data.get("inode")
        if inode is not None and (type(inode) is not int or inode < 0):
            raise ValueError(f"'inode' must be a non-negative integer, not {inode!r}")
        if not isinstance(data.get("path"), str) or not isinstance(data.get("closed"), bool):
            raise ValueError("a file entry needs a string 'path' and a boolean 'closed'")
        position = _position_of(data)
        return cls(data["path"], inode, _identity_of(data, position), position, data["closed"])


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

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "input": self.input,
            **asdict(self.position),
            "completed": self.completed,
            "updated_at": self.updated_at,
            "gone": asdict(self.gone),
            "files": [f.to_json() for f in self.files],
        }

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


def _dumps(document: dict[str, Any]) -> str:
    """JSON text of a document whose integers (at any depth) may be of any length."""
    long_ints: dict[str, int] = {}

    def shield(value: Any) -> Any:
        if type(value) is int and value.bit_length() > 64:
            token = f"\0{len(long_ints)}\0"
            long_ints[token] = value
            return token
        if isinstance(value, dict):
            return {k: shield(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shield(v) for v in value]
        return value

    text = json.dumps(shield(document), indent=2)
    for token, value in long_ints.items():
        text = text.replace(json.dumps(token), decimal_of(value))
    return text


def sealed(document: dict[str, Any]) -> bytes:
    """The document's text ending in a checksum of that very text (its digits zeroed)."""
    text = _dumps(document | {"checksum": "sha256:" + "0" * _CHECKSUM_HEX}).encode() + b"\n"
    digest = hashlib.sha256(text).hexdigest().encode()
    at = text.rindex(_CHECKSUM_KEY) + len(_CHECKSUM_KEY)
    return text[:at] + digest + text[at + _CHECKSUM_HEX :]


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
    _write(path, (_dumps(document) + "\n").encode())


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, [data])
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
            raw = self.path.read_bytes()
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
            detail = "empty file" if not raw.strip(b"\0 \n") else str(error).splitlines()[0]
            raise CheckpointCorrupt(
                f"checkpoint {self.path} is corrupt ({detail}); it was left untouched: "
                "fix it, or run `checkpoint-worker reset` to start over"
            ) from error

    def save(self, checkpoint: Checkpoint) -> None:
        _write(self.path, sealed(checkpoint.to_json()))
