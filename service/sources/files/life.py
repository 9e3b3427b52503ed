"""A file partition's life: its states in one enum, every transition in one table.

Rule 1: an event is what the partition did (`Action`) or what happened to its file (`Change`,
        from `changes.py`); `FileLife.on` moves to the state the table gives, and an event the
        table does not list for the state raises `ImpossibleEvent` at once, never passes unseen.
Rule 2: two roles, two tables. A file followed by its identity (globs, lists) is renamed, renamed
        out, parked and deleted; one plain path is followed by its name, and a file replaced or
        deleted under it is read again from 0 (under `on_input_change=restart`), whichever file
        it is then. Under `fail` a change of the input raises before it reaches the table.
Rule 3: the state says what the next `next_batch` does: open by name first (`NOT_OPEN`), look at
        what changed before reading (`LOOK_FIRST`), read, or nothing more (`ENDED`). The
        descriptor and the slot follow the state: held while open, given back when it ends.
"""

from __future__ import annotations

import enum

from service.sources.files.changes import Change

__all__ = [
    "BY_IDENTITY",
    "BY_NAME",
    "ENDED",
    "LOOK_FIRST",
    "NOT_OPEN",
    "REOPENED_BY_NAME",
    "Action",
    "Event",
    "FileLife",
    "ImpossibleEvent",
    "State",
]


class State(enum.Enum):
    WAITING_FOR_SLOT = "waiting_for_slot"  # not opened yet: a slot, then the file by its name
    OPEN = "open"  # open, and more may be read at once
    CAUGHT_UP = "caught_up"  # open, at its end last time: what changed is looked at first
    PARKED = "parked"  # caught up, its slot given to waiting files; reopened by name, same file
    RENAMED_OUT = "renamed_out"  # open, no pattern matches it: read until idle `close_inactive`
    PARKED_OUT = "parked_out"  # not open, renamed out, its new name known: reopened by it, then
    # read as RENAMED_OUT
    WAITING_FOR_FILE = "waiting_for_file"  # a plain path led elsewhere: its next file, from 0
    DONE = "done"  # read to its end, not followed: its state stays as it is
    CLOSED = "closed"  # followed, closed for good and kept: renamed out, gone before it was read
    DELETED = "deleted"  # finished through its descriptor after its last name went: folded


class Action(enum.Enum):
    OPENED = "opened"  # opened by its name, and it is the file expected
    MISSED = "missed"  # not opened: its name leads to no file, or to another one
    ENDED = "ended"  # read to its end, not following
    PARKED = "parked"  # caught up, gave its slot up for files waiting for one


Event = Change | Action

NOT_OPEN = frozenset(
    {State.WAITING_FOR_SLOT, State.PARKED, State.PARKED_OUT, State.WAITING_FOR_FILE}
)
# Not open, and opened by name when their turn comes: one renamed out is looked for beside.
REOPENED_BY_NAME = frozenset({State.WAITING_FOR_SLOT, State.PARKED, State.PARKED_OUT})
LOOK_FIRST = frozenset({State.CAUGHT_UP, State.RENAMED_OUT})
ENDED = frozenset({State.DONE, State.CLOSED, State.DELETED})

_S, _A, _C = State, Action, Change

# Both roles: open, read, catch up, park, and read again from 0 after a change below the
# position (TRUNCATED, REWRITTEN reach the table only under `restart`).
_READING: dict[tuple[State, Event], State] = {
    (_S.WAITING_FOR_SLOT, _A.OPENED): _S.OPEN,
    (_S.WAITING_FOR_SLOT, _A.MISSED): _S.WAITING_FOR_SLOT,  # following: the next scan tells
    (_S.WAITING_FOR_SLOT, _C.RENAMED_OUT): _S.CLOSED,  # not opened, so not reopened by name
    (_S.OPEN, _C.GREW): _S.OPEN,
    (_S.OPEN, _C.UNCHANGED): _S.CAUGHT_UP,
    (_S.OPEN, _C.TRUNCATED): _S.OPEN,
    (_S.OPEN, _C.REWRITTEN): _S.OPEN,
    (_S.OPEN, _A.ENDED): _S.DONE,
    (_S.CAUGHT_UP, _C.GREW): _S.OPEN,
    (_S.CAUGHT_UP, _C.UNCHANGED): _S.CAUGHT_UP,
    (_S.CAUGHT_UP, _C.TRUNCATED): _S.OPEN,
    (_S.CAUGHT_UP, _C.REWRITTEN): _S.OPEN,
    (_S.CAUGHT_UP, _A.PARKED): _S.PARKED,
    (_S.PARKED, _A.OPENED): _S.CAUGHT_UP,  # looked at before anything is read
    (_S.PARKED, _A.MISSED): _S.PARKED,
}

BY_IDENTITY: dict[tuple[State, Event], State] = {
    **_READING,
    (_S.WAITING_FOR_SLOT, _C.RENAMED): _S.WAITING_FOR_SLOT,
    (_S.OPEN, _C.RENAMED): _S.OPEN,
    (_S.OPEN, _C.RENAMED_OUT): _S.RENAMED_OUT,
    (_S.OPEN, _C.DELETED): _S.DELETED,
    (_S.CAUGHT_UP, _C.RENAMED): _S.CAUGHT_UP,
    (_S.CAUGHT_UP, _C.RENAMED_OUT): _S.RENAMED_OUT,
    (_S.CAUGHT_UP, _C.DELETED): _S.DELETED,
    (_S.PARKED, _C.RENAMED): _S.PARKED,
    (_S.PARKED, _C.RENAMED_OUT): _S.CLOSED,  # its new name is unknown: nothing to reopen
    (_S.WAITING_FOR_SLOT, _C.RENAMED_ASIDE): _S.PARKED_OUT,
    (_S.PARKED, _C.RENAMED_ASIDE): _S.PARKED_OUT,
    (_S.PARKED_OUT, _C.RENAMED_ASIDE): _S.PARKED_OUT,  # still there, or renamed again beside
    (_S.PARKED_OUT, _C.RENAMED_OUT): _S.CLOSED,  # gone from its directory: no name to reopen
    (_S.PARKED_OUT, _C.RENAMED): _S.PARKED,  # back under a pattern
    (_S.PARKED_OUT, _A.OPENED): _S.RENAMED_OUT,  # looked at, then read until inactive
    (_S.PARKED_OUT, _A.MISSED): _S.PARKED_OUT,  # renamed since: the next scan tells
    (_S.PARKED_OUT, _C.DELETED): _S.DELETED,  # reopened, its inode is another file's
    (_S.WAITING_FOR_SLOT, _C.DELETED): _S.DELETED,  # resumed; its inode is another file's now
    (_S.PARKED, _C.DELETED): _S.DELETED,  # reopened, its inode is another file's (generation)
    (_S.RENAMED_OUT, _C.GREW): _S.RENAMED_OUT,
    (_S.RENAMED_OUT, _C.UNCHANGED): _S.RENAMED_OUT,
    (_S.RENAMED_OUT, _C.TRUNCATED): _S.RENAMED_OUT,
    (_S.RENAMED_OUT, _C.REWRITTEN): _S.RENAMED_OUT,
    (_S.RENAMED_OUT, _C.RENAMED): _S.CAUGHT_UP,  # back under a pattern
    (_S.RENAMED_OUT, _C.RENAMED_OUT): _S.RENAMED_OUT,
    (_S.RENAMED_OUT, _C.DELETED): _S.DELETED,
    (_S.RENAMED_OUT, _C.INACTIVE): _S.CLOSED,
    # Scans may come between the end of its reading and its retirement.
    (_S.CLOSED, _C.RENAMED): _S.CLOSED,
    (_S.CLOSED, _C.RENAMED_OUT): _S.CLOSED,
    (_S.DELETED, _C.RENAMED_OUT): _S.DELETED,
}

BY_NAME: dict[tuple[State, Event], State] = {
    **_READING,
    (_S.OPEN, _C.REPLACED): _S.WAITING_FOR_FILE,
    (_S.OPEN, _C.DELETED): _S.WAITING_FOR_FILE,
    (_S.CAUGHT_UP, _C.REPLACED): _S.WAITING_FOR_FILE,
    (_S.CAUGHT_UP, _C.DELETED): _S.WAITING_FOR_FILE,
    (_S.WAITING_FOR_FILE, _A.OPENED): _S.OPEN,
    (_S.WAITING_FOR_FILE, _A.MISSED): _S.WAITING_FOR_FILE,
}


class ImpossibleEvent(RuntimeError):
    """An event the table does not allow in the current state: a defect, reported at once."""


class FileLife:
    """Where one file partition stands; it changes only through `on`."""

    def __init__(self, *, by_name: bool) -> None:
        self.table = BY_NAME if by_name else BY_IDENTITY
        self.state = State.WAITING_FOR_SLOT

    def on(self, event: Event) -> State:
        """Move to the state the table gives for `event`, or raise `ImpossibleEvent`."""
        try:
            self.state = self.table[self.state, event]
        except KeyError:
            raise ImpossibleEvent(f"{event} cannot happen to a file in {self.state}") from None
        return self.state
