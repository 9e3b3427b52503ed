"""The shutdown deadline: `shutdown_timeout` after a stop begins, the process ends, whatever it
is doing (a save on a stalled disk, which no cancellation interrupts; one native operation of
seconds that holds the GIL, as converting a number of tens of millions of digits does).

Rule 1: the countdown runs in a native thread (`_deadline.c`) that never needs the GIL. A
        Python timer thread, or a Python signal handler, waits for the GIL like everything else.
Rule 2: it starts at the first stop signal, seen by that thread the instant the signal arrives:
        the interpreter's signal wakeup pipe is the thread's, and CPython writes each signal's
        number into it before any Python code runs. A stop for another reason (the run ended,
        stdout closed) starts it with `begin()`.
Rule 3: at the deadline the thread writes the lines it was given when it started (their
        timestamps stamped then) and ends the process; the checkpoint on disk is whole at any
        instant, so the next run resumes from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable

from service.lifecycle import _deadline

__all__ = ["NOW", "ShutdownDeadline"]

NOW = _deadline.NOW  # a timestamp placeholder in the last lines, stamped when they are written
_BEGIN = b"\0"  # no signal has number 0


class ShutdownDeadline:
    """Started once per run, before the worker listens for signals."""

    def __init__(
        self, seconds: float, stop_signals: Iterable[int], last_lines: bytes, exit_code: int
    ) -> None:
        read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _deadline.watch(
            wakeup_fd=read_end,
            seconds=seconds,
            triggers=bytes(stop_signals) + _BEGIN,
            output_fd=sys.stdout.fileno(),
            last_lines=last_lines,
            exit_code=exit_code,
        )
        signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)

    def begin(self) -> None:
        """Start the countdown now, if a stop signal has not already started it."""
        # The pipe is full only in a flood of signals, which the thread is reading already.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_end, _BEGIN)
