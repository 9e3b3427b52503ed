"""The expected failures: each carries the one line a user sees and the process exit code."""

from __future__ import annotations

__all__ = [
    "BadRecordFound",
    "CheckpointCorrupt",
    "CheckpointOfSeveralFiles",
    "CheckpointWriteFailed",
    "InputChanged",
    "InputUnreadable",
    "ListenFailed",
    "LockHeld",
    "LockLost",
    "UnexpectedError",
    "UsageError",
    "WorkerError",
]


class WorkerError(Exception):
    """An expected failure: reported as one line, never as a traceback."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(WorkerError):
    """A bad flag, setting or configuration file."""

    exit_code = 2


class BadRecordFound(WorkerError):
    """A bad line under on_bad_record=fail; the checkpoint stops just before it."""


class CheckpointCorrupt(WorkerError):
    """The checkpoint file exists but cannot be trusted; it is left untouched."""


class CheckpointOfSeveralFiles(WorkerError):
    """The library was asked where to resume a checkpoint of several files without naming one."""


class CheckpointWriteFailed(WorkerError):
    """A checkpoint or result could not be written; the previous file is intact."""


class InputUnreadable(WorkerError):
    """The input is missing, not a regular file, or cannot be read."""


class InputChanged(WorkerError):
    """The input no longer matches what the checkpoint consumed."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ListenFailed(WorkerError):
    """The metrics address cannot be listened on (in use, not an address of this machine)."""


class LockHeld(WorkerError):
    """Another worker holds the checkpoint's lock."""


class LockLost(WorkerError):
    """The lock file was replaced under a running worker: another may hold the checkpoint now,
    so this one stops without writing over it."""


class UnexpectedError(WorkerError):
    """A defect, not an expected failure: reported with its traceback, exit 1."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"unexpected error: {type(cause).__name__}: {cause}")
        self.cause = cause
