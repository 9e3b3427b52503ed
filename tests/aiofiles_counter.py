"""The command line with aiofiles' reads counted: `python tests/aiofiles_counter.py REPORT ARGS`.

Each `read`, `read1` and `readinto` of an aiofiles binary file appends the number of bytes it
returned to REPORT, one line a call, before `checkpoint-worker ARGS` runs as usual. A test then
compares what came through aiofiles with what the worker consumed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiofiles.threadpool import binary

from service.cli import console

Method = Callable[..., Awaitable[Any]]


def _counted(method: Method, report: int) -> Method:
    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await method(self, *args, **kwargs)
        size = result if isinstance(result, int) else len(result or b"")
        os.write(report, b"%d\n" % size)
        return result

    return counting


def main() -> None:
    report = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for kind in (binary.AsyncBufferedIOBase, binary.AsyncBufferedReader, binary.AsyncFileIO):
        for name in ("read", "read1", "readinto"):
            if name in vars(kind):  # each method once, where it is defined
                setattr(kind, name, _counted(getattr(kind, name), report))
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    console()


if __name__ == "__main__":
    main()
