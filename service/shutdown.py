"""Bounds on a graceful stop, shared by every source's lifecycle.

Rule 1: once a stop is under way, a second SIGTERM/SIGINT ends the process at once (128 + n);
        whatever was committed or saved before is whole.
Rule 2: a stop that outlasts `shutdown_timeout` ends the process with one error line, whatever
        it waits for (a stalled disk, an unreachable broker): no cancellation can interrupt those.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

import anyio
import anyio.abc

from .errors import UnexpectedError, WorkerError
from .logs import Logger

__all__ = ["exit_after", "exit_at_next_signal", "listen_for_stop_signals", "report_failure"]


def exit_at_next_signal() -> None:
    """From now on SIGTERM/SIGINT end the process at once; the checkpoint on disk stays whole."""

    def _exit_now(signum: int, _frame: FrameType | None) -> None:
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_now)


def exit_after(seconds: float, log: Logger) -> None:
    """End the process `seconds` from now, whatever it waits for (a save on a stalled disk,
    which no cancellation can interrupt): the checkpoint on disk is whole at any instant."""

    def expire() -> None:
        log.error(
            "fatal_error",
            message=f"shutdown took longer than shutdown_timeout={seconds}s (a stalled disk?); "
            "exiting without the final checkpoint; the one on disk is whole",
        )
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def report_failure(log: Logger, failure: WorkerError | None) -> None:
    """The one error line of a failed run: a defect with its traceback, else the message."""
    if isinstance(failure, UnexpectedError):
        log.error("fatal_error", message=failure.message, exc_info=failure.cause)
    elif failure is not None:
        log.error("fatal_error", message=failure.message)


async def listen_for_stop_signals(
    on_stop: Callable[[int], None],
    early_signals: list[int],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_stop` with the first SIGTERM/SIGINT (or one that came before we listened)."""
    stopped = False
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            for signum in early_signals:  # arrived before this receiver took over
                stopped = True
                on_stop(signum)
                return
            async for signum in signals:
                stopped = True
                on_stop(signum)
                return
    finally:
        if stopped:
            # Leaving the receiver restored the default handlers: a second signal while the
            # tasks unwind must still exit at once, not kill us or raise KeyboardInterrupt.
            exit_at_next_signal()
