"""Descriptors reserved for the worker's own files.

Rule 1: at any instant the worker must be able to open its checkpoint, the temporary file of a
        save, the result, its lock and the directories it fsyncs, beside what Python, the event
        loop and Kafka's connections hold. `RESERVED_DESCRIPTORS` of the process's limit
        (RLIMIT_NOFILE) are kept for them; input files and HTTP connections share the rest.
Rule 2: when the limit is too low for `max_open_files` and `MAX_CONNECTIONS`, both are lowered
        to fit, said once in a warning: a flood of idle HTTP clients or many files wait their
        turn instead of starving the checkpoint.
Rule 3: below `LOWEST_LIMIT` not even that is sure: the worker refuses to start, in one line,
        rather than fail with EMFILE once it has read for a while.
"""

from __future__ import annotations

import dataclasses
import resource

from service.errors import WorkerError
from service.settings import Settings
from service.telemetry.logs import Logger

__all__ = [
    "LOWEST_LIMIT",
    "MAX_CONNECTIONS",
    "RESERVED_DESCRIPTORS",
    "http_connections_allowed",
    "require_descriptors",
    "reserve_descriptors",
]

RESERVED_DESCRIPTORS = 64
LOWEST_LIMIT = 16  # 13 is enough for a glob of thousands of files: a margin for inherited ones
MAX_CONNECTIONS = 64  # HTTP connections served at once, when the limit allows


def _shared_budget() -> int:
    """Descriptors input files and HTTP connections may hold between them."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(2, soft - RESERVED_DESCRIPTORS)


def http_connections_allowed() -> int:
    """At most half the shared budget goes to HTTP connections."""
    return max(1, min(MAX_CONNECTIONS, _shared_budget() // 2))


def require_descriptors() -> None:
    """Raise a WorkerError when the open-files limit is below `LOWEST_LIMIT`."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < LOWEST_LIMIT:
        raise WorkerError(
            f"the open-files limit (ulimit -n) is {soft}: the worker needs at least "
            f"{LOWEST_LIMIT} to be sure of writing its checkpoint; raise it"
        )


def reserve_descriptors(settings: Settings, log: Logger) -> Settings:
    """`settings` with `max_open_files` lowered to what the limit leaves; one warning if so."""
    serves_http = bool(settings.metrics_address)
    http = http_connections_allowed() if serves_http else 0
    files = max(1, min(settings.max_open_files, _shared_budget() - http))
    if files < settings.max_open_files or (serves_http and http < MAX_CONNECTIONS):
        log.warning(
            "descriptors_reserved",
            limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            reserved=RESERVED_DESCRIPTORS,
            max_open_files=files,
            http_connections=http,
            message="the open-files limit (ulimit -n) is low: fewer files and HTTP connections "
            "at once, so the checkpoint can always be written",
        )
    return dataclasses.replace(settings, max_open_files=files)
