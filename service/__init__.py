"""checkpoint-worker: a resumable, checkpointed stream summation service, and its library.

The library names below are imported on first use, so `checkpoint-worker healthcheck` (which
Docker runs every few seconds) does not pay for what it does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"

_EXPORTS = {
    "load_checkpoint": "library",
    "number_stream": "library",
    "save_checkpoint": "library",
    "CheckpointCorrupt": "errors",
    "CheckpointOfSeveralFiles": "errors",
    "InputChanged": "errors",
    "LockHeld": "errors",
    "Checkpoint": "storage.checkpoint",
    "CheckpointStore": "storage.checkpoint",
    "LineParser": "core.parsing",
    "Position": "core.position",
    "Settings": "settings",
}

__all__ = [
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointOfSeveralFiles",
    "CheckpointStore",
    "InputChanged",
    "LineParser",
    "LockHeld",
    "Position",
    "Settings",
    "__version__",
    "load_checkpoint",
    "number_stream",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from service.core.parsing import LineParser
    from service.core.position import Position
    from service.errors import CheckpointCorrupt, CheckpointOfSeveralFiles, InputChanged, LockHeld
    from service.library import load_checkpoint, number_stream, save_checkpoint
    from service.settings import Settings
    from service.storage.checkpoint import Checkpoint, CheckpointStore


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
