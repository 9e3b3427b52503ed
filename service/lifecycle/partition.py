"""Sources and partitions: the protocol between the lifecycle and what it reads.

Rule 1: a source finds partitions and saves every partition's state together, as of one instant;
        a partition reads one stream (a file, a Kafka partition) from the state it was built with.
Rule 2: a partition never sleeps, saves or handles signals: `next_batch` reads what there is and
        says where the partition stands (`ReadStatus`); the lifecycle decides when to ask again.
Rule 3: all of a partition's state is its `Position` and what identifies it, derived from them
        alone, so a partition rebuilt from a snapshot carries on exactly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from service.core.parsing import Parsed
from service.core.position import Position

__all__ = ["Gauge", "Partition", "Reachable", "ReadStatus", "Source", "Standing", "Step"]


class ReadStatus(enum.Enum):
    READING = "reading"  # more may be read at once
    CAUGHT_UP = "caught_up"  # at the end for now; ask again after `poll_interval`
    DONE = "done"  # read to its end, not followed: nothing more will come
    CLOSED = "closed"  # followed, and now closed for good (deleted, renamed away, revoked)
    # Caught up, and nothing to ask it until the source hands it back from `discover` (a scan
    # brought news of it): no task waits on it meanwhile.
    PARKED = "parked"


@dataclass(frozen=True)
class Step:
    """What one `next_batch` consumed, and where the partition stands after it."""

    parsed: Parsed
    status: ReadStatus
    # What this step read, when the partition's position also moves for other reasons: a Kafka
    # member's position gains a partition's committed totals on assignment, which were read
    # before. None: the position moved by reading alone.
    consumed: Position | None = None


@dataclass(frozen=True)
class Gauge:
    """Where one stream stands, for metrics and the progress line: a file or a Kafka partition.

    A file: `end` is its size and `lag` the bytes left. A Kafka partition: `end` is its log end
    offset and `lag` the messages past the group's last commit, as consumer-group lag counts.
    """

    label: str  # a file's path, or `topic:partition`
    position: Position
    end: int
    lag: int
    unit: str  # what `lag` counts: "bytes" or "messages"
    # False for a file read on after its name went (renamed out, deleted): the name may be
    # another file's now, so metrics give it no series of its own.
    named: bool = True


@dataclass(frozen=True)
class Standing:
    """The whole source, for metrics: records consumed but not saved yet, and how many
    partitions the input has in all when that is known (a Kafka topic's)."""

    unsaved_records: int
    partitions: int | None = None


class Reachable(Protocol):
    def __call__(self, yes: bool, why: str = "the input cannot be reached") -> None:
        """The input can be read now, or cannot (`why`, for `/readyz`)."""


class Partition(Protocol):
    @property
    def label(self) -> str:
        """What logs and metrics call it: a file's path, or `topic:partition`."""
        ...

    @property
    def position(self) -> Position: ...

    def gauges(self) -> list[Gauge]:
        """Where each stream it reads stands: one for a file, one per owned Kafka partition."""
        ...

    async def next_batch(self) -> Step: ...

    async def close(self) -> None: ...


class Source(Protocol):
    def describe(self) -> str:
        """The input as the user configured it, for logs."""
        ...

    def acquire(self) -> None:
        """Take what makes this process the only reader (a lock), before anything else."""
        ...

    async def start(self) -> list[Partition]:
        """Load the saved state and return the partitions to read first."""
        ...

    async def watch(self, reachable: Reachable) -> None:
        """Beside start-up and reading, until cancelled: tell `reachable` when the input can no
        longer be reached and when it can again; raise a WorkerError to end the run."""
        ...

    async def discover(self) -> list[Partition]:
        """Look again (following): new partitions to read; notice renamed and gone ones."""
        ...

    def park(self, partition: Partition) -> None:
        """`partition` said PARKED and its task ended: hand it back from `discover` when there
        may be something to read."""
        ...

    def retire(self, partition: Partition) -> None:
        """A partition's reading ended (`DONE` or `CLOSED`): keep or fold its state."""
        ...

    def totals(self) -> Position:
        """Every partition's position added up, gone ones included."""
        ...

    def input_size(self) -> int:
        """How much there is to read in all, as last seen."""
        ...

    def changed_since_save(self) -> bool: ...

    def standing(self) -> Standing: ...

    async def save(self, reason: str, *, completed: bool = False) -> bool:
        """Save every partition's state as of this instant, atomically; False if not needed."""
        ...

    def heartbeat(self) -> None:
        """Tell `healthcheck` the event loop turns (blocking, short)."""
        ...

    def report(self) -> dict[str, Any]:
        """The result document: the totals and each present partition's own."""
        ...

    async def close(self) -> None: ...
