"""The `WORKER_*` environment variables, read one way by every command.

Rule 1: a variable names a setting whatever its case (`WORKER_FOLLOW`, `worker_follow`), as on
        most tools. This module imports nothing heavy: `healthcheck` reads it too.
"""

from __future__ import annotations

import os
from collections.abc import Collection

__all__ = ["ENV_PREFIX", "worker_environment"]

ENV_PREFIX = "WORKER_"


def worker_environment(names: Collection[str]) -> dict[str, str]:
    """The `WORKER_*` variables that name one of `names` (lower-case setting names)."""
    found: dict[str, str] = {}
    for key, value in os.environ.items():
        name = key.lower().removeprefix(ENV_PREFIX.lower())
        if key.upper().startswith(ENV_PREFIX) and name in names:
            found[name] = value
    return found
