"""The `WORKER_*` environment variables, read one way by every command.

Rule 1: a variable names a setting whatever its case (`WORKER_FOLLOW`, `worker_follow`), as on
        most tools. This module imports nothing heavy: `healthcheck` reads it too.
        Two variables that name one setting (`WORKER_CHECKPOINT`, `worker_checkpoint`) with
        different values are a usage error: which one wins would depend on their order.
Rule 2: a `WORKER_*` variable that names no setting is not an error (the prefix is a common
        one), but `run` says so, with the variable it may have meant: a misspelt setting would
        otherwise be silently left at its default.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from service.errors import UsageError

__all__ = ["ENV_PREFIX", "unknown_worker_variables", "worker_environment"]

ENV_PREFIX = "WORKER_"
# The compose file's image tag (`docker-compose.yml`): the project's own, though not a setting.
_NOT_SETTINGS = frozenset({"image"})


def _named(key: str) -> str | None:
    """The lower-case name a `WORKER_*` variable gives (`max_rate`), or None for any other."""
    return (
        key.lower().removeprefix(ENV_PREFIX.lower()) if key.upper().startswith(ENV_PREFIX) else None
    )


def worker_environment(names: Collection[str]) -> dict[str, str]:
    """The `WORKER_*` variables that name one of `names` (lower-case setting names)."""
    found: dict[str, str] = {}
    given_by: dict[str, str] = {}
    for key, value in os.environ.items():
        name = _named(key)
        if name is None or name not in names:
            continue
        if name in found and found[name] != value:  # no value shown: it may be a secret
            raise UsageError(
                f"{given_by[name]} and {key} both give the setting {name!r}, differently; keep one"
            )
        found[name] = value
        given_by[name] = key
    return found


def unknown_worker_variables(names: Collection[str]) -> list[tuple[str, str | None]]:
    """Each `WORKER_*` variable that names none of `names` (nor `config`), sorted, with the
    setting's variable it most resembles, if one is close."""
    known = {*names, "config", *_NOT_SETTINGS}
    unknown = sorted(key for key in os.environ if _named(key) not in (None, *known))
    if not unknown:
        return []
    import difflib  # only when there is something to suggest

    variables = [ENV_PREFIX + name.upper() for name in sorted({*names, "config"})]
    return [
        (key, next(iter(difflib.get_close_matches(key.upper(), variables, n=1, cutoff=0.8)), None))
        for key in unknown
    ]
