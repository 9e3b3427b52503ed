"""The checkpoint: its format, the input identity it carries, and the atomic store.

Rule 1: a checkpoint is only ever replaced whole (`files.atomic_write`), never edited in place.
Rule 2: a checkpoint that cannot be trusted (torn, corrupt, wrong shape, unknown version) is
        reported and left exactly as it is: the worker never silently starts over.
Rule 3: the input identity is a hash of the first KiB and of the last KiB of the consumed prefix,
        read from the very file descriptor the worker reads, plus the offset that the input's size
        must reach. It costs the same at any offset and lets the input grow.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .decimal_text import decimal_of, int_of
from .errors import CheckpointCorrupt, CheckpointWriteFailed
from .files import atomic_write
from .state import Position

__all__ = [
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointStore",
    "InputIdentity",
    "identify_input",
    "write_json",
]

CHECKPOINT_VERSION = 1
IDENTITY_WINDOW = 1024


@dataclass(frozen=True)
class InputIdentity:
    """Hashes of the first and last `IDENTITY_WINDOW` bytes before the checkpoint's offset."""

    head_sha256: str
    tail_sha256: str


def identify_input(fd: int, offset: int) -> InputIdentity:
    """The identity of the input's first `offset` bytes, read with pread (blocking, cheap)."""
    head = os.pread(fd, min(offset, IDENTITY_WINDOW), 0)
    tail_start = max(0, offset - IDENTITY_WINDOW)
    tail = os.pread(fd, offset - tail_start, tail_start)
    return InputIdentity(hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Checkpoint:
    """What a run has consumed of its input, and what it added up to."""

    position: Position
    input: str
    identity: InputIdentity | None
    completed: bool = False
    updated_at: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "input": self.input,
            **asdict(self.position),
            "identity": asdict(self.identity) if self.identity else None,
            "completed": self.completed,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: object) -> Checkpoint:
        """Validate a decoded checkpoint; raise ValueError naming the first problem."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.get("version")
        if type(version) is not int or version != CHECKPOINT_VERSION:  # true == 1.0 == 1
            raise ValueError(
                f"unknown version {version!r} (this worker reads {CHECKPOINT_VERSION})"
            )
        counts = {}
        for name in ("offset", "lines", "records", "bad_records"):
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
        identity = data.get("identity")
        if counts["offset"] > 0 or identity is not None:
            if not (
                isinstance(identity, dict)
                and all(isinstance(identity.get(k), str) for k in ("head_sha256", "tail_sha256"))
            ):
                raise ValueError("'identity' must hold head_sha256 and tail_sha256")
            identity = InputIdentity(identity["head_sha256"], identity["tail_sha256"])
        for name, kind in (("input", str), ("completed", bool), ("updated_at", str)):
            if not isinstance(data.get(name), kind):
                raise ValueError(f"{name!r} must be a {kind.__name__}")
        return cls(
            Position(sum=total, **counts),
            data["input"],
            identity,
            data["completed"],
            data["updated_at"],
        )


def _dumps(document: dict[str, Any]) -> str:
    """JSON text of a flat document whose integers may be of any length."""
    long_ints = {k for k, v in document.items() if type(v) is int and v.bit_length() > 64}
    text = json.dumps({k: f"\0{k}" if k in long_ints else v for k, v in document.items()}, indent=2)
    for key in long_ints:
        text = text.replace(json.dumps(f"\0{key}"), decimal_of(document[key]))
    return text


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomically replace `path` with a JSON document, or raise CheckpointWriteFailed."""
    text = _dumps(document) + "\n"
    try:
        atomic_write(path, [text.encode()])
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
            return Checkpoint.from_json(json.loads(raw, parse_int=int_of))
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            detail = "empty file" if not raw.strip(b"\0 \n") else str(error).splitlines()[0]
            raise CheckpointCorrupt(
                f"checkpoint {self.path} is corrupt ({detail}); it was left untouched: "
                "fix it, or run `checkpoint-worker reset` to start over"
            ) from error

    def save(self, checkpoint: Checkpoint) -> None:
        write_json(self.path, checkpoint.to_json())
