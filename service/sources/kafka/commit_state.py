"""A Kafka partition's state and the messages that advance it. Pure: no I/O, no clock.

Rule 1: a partition's state is a `Position` whose `offset` is the Kafka offset of the next
        message to read; `lines`, `records`, `bad_records` and `sum` total every message before it.
Rule 2: the state is committed as one value: the offset in the group's offset commit, the rest in
        that commit's metadata string (`encode` / `decode`), so the two can never disagree.
Rule 3: a message is whole: its value holds complete lines by the input rules, and its last line
        is a record even without '\\n'. A message is applied entirely or not at all, so a bad
        record under `fail` leaves the state before that message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from service.core.decimal_text import decimal_of, int_of
from service.core.parsing import BadRecord, parse_region
from service.core.position import Position

__all__ = [
    "STATE_VERSION",
    "Applied",
    "StateUnreadable",
    "apply_clean_messages",
    "apply_message",
    "decode",
    "encode",
]

STATE_VERSION = 1


class StateUnreadable(ValueError):
    """A committed metadata string that is not a state this worker wrote."""


def encode(position: Position) -> str:
    """The metadata string committed beside `position.offset`."""
    return json.dumps(
        {
            "v": STATE_VERSION,
            "lines": position.lines,
            "records": position.records,
            "bad_records": position.bad_records,
            "sum": decimal_of(position.sum),
        },
        separators=(",", ":"),
    )


_KEYS = frozenset({"v", "lines", "records", "bad_records", "sum"})
_SUM = re.compile(r"-?[0-9]+")  # ASCII digits only, as `encode` writes them


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise StateUnreadable("its commit metadata repeats a key")
    return value


def decode(offset: int, metadata: str) -> Position:
    """The state committed at `offset` with `metadata`; StateUnreadable if it is not exactly
    what `encode` writes (a key more, a key twice, a sum in other digits or with spaces)."""
    try:
        value = json.loads(metadata, object_pairs_hook=_unique_keys)
    except StateUnreadable:
        raise
    except ValueError:
        raise StateUnreadable("its commit metadata is not JSON") from None
    version = value.get("v") if isinstance(value, dict) else None
    if type(version) is not int or version != STATE_VERSION:
        raise StateUnreadable(f"its commit metadata is not a version {STATE_VERSION} state")
    counts = [value.get(key) for key in ("lines", "records", "bad_records")]
    total = value.get("sum")
    if (
        set(value) != _KEYS
        or not all(type(count) is int and count >= 0 for count in counts)
        or not isinstance(total, str)
        or not _SUM.fullmatch(total)
    ):
        raise StateUnreadable("its commit metadata has a wrong shape")
    try:
        exact = int_of(total)
    except ValueError:
        raise StateUnreadable("its commit metadata has a sum that is not an integer") from None
    lines, records, bad_records = (int(count) for count in counts)
    if offset < 0 or records + bad_records > lines:
        raise StateUnreadable("its commit metadata contradicts itself")
    return Position(offset, lines, records, bad_records, exact)


@dataclass(frozen=True)
class Applied:
    """The state after a message, the bad records in it (line within the message, byte offset
    within the value), and the one that stopped it under `fail` (the state is then unchanged)."""

    position: Position
    bad: tuple[BadRecord, ...] = ()
    failed: BadRecord | None = None


def apply_message(
    position: Position,
    offset: int,
    value: bytes | None,
    max_line_bytes: int,
    *,
    stop_at_bad: bool,
    bad_details: int,
) -> Applied:
    """Apply the message at `offset` (at or after `position.offset`) to `position`."""
    data = _whole_lines(value)
    result = parse_region(data, max_line_bytes, stop_at_bad=stop_at_bad, bad_details=bad_details)
    if result.failed is not None:
        return Applied(position, (), result.failed)
    after = Position(
        offset + 1,
        position.lines + result.lines,
        position.records + result.records,
        position.bad_records + result.bad_records,
        position.sum + result.sum,
    )
    return Applied(after, result.bad)


def apply_clean_messages(
    position: Position, last_offset: int, values: list[bytes | None], max_line_bytes: int
) -> Position | None:
    """Apply consecutive messages (the last at `last_offset`) in one parse; None when they hold
    a bad record, which `apply_message` then reports one message at a time (line and offset
    within its own message, a stop under `fail`)."""
    data = b"".join(_whole_lines(value) for value in values)
    result = parse_region(data, max_line_bytes, stop_at_bad=False, bad_details=0)
    if result.bad_records:
        return None
    return Position(
        last_offset + 1,
        position.lines + result.lines,
        position.records + result.records,
        position.bad_records,
        position.sum + result.sum,
    )


def _whole_lines(value: bytes | None) -> bytes:
    """A message is complete: its last line is a record without '\n' too."""
    data = value or b""
    return data + b"\n" if data and not data.endswith(b"\n") else data
