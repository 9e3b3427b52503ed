"""The signals `run` acts on. Every signal whose default action ends a process is one of two kinds
here, so that none of them ends the worker without its final checkpoint.

Stop signals end the run gracefully: the final checkpoint, then exit 0; a second one during the
shutdown exits at once with 128 + its number. Besides SIGTERM, SIGINT and SIGHUP: SIGQUIT
(Ctrl+\\, and the graceful stop of nginx and others), SIGXCPU (the CPU-time limit's warning,
repeated each second of CPU until the hard limit's SIGKILL: a repeat is not a second signal)
and SIGPWR (a failing power supply).

Ignored signals are those other programs give a meaning of their own (reopen the logs, reload,
dump, a timer, a profiler's tick, the real-time signals): the worker has none of these, so it
keeps reading and says once per signal that it ignored it. Faults (SIGSEGV, SIGBUS, SIGABRT...)
and SIGKILL are neither: a process cannot go on after them.
"""

from __future__ import annotations

import signal

__all__ = ["IGNORED_SIGNALS", "STOP_SIGNALS", "release_held_stop_signals", "signal_name"]


def _those_here(*names: str) -> tuple[int, ...]:
    # SIGPWR, SIGSTKFLT and the real-time signals are Linux's: the library imports this anywhere.
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


STOP_SIGNALS: tuple[int, ...] = _those_here(
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGXCPU", "SIGPWR"
)

IGNORED_SIGNALS: tuple[int, ...] = (
    *_those_here("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGSTKFLT"),
    *(range(signal.SIGRTMIN, signal.SIGRTMAX + 1) if hasattr(signal, "SIGRTMIN") else ()),
)


def signal_name(signum: int) -> str:
    """`SIGTERM`, or `SIGRTMIN+3` for a real-time signal (which has no name of its own)."""
    if signal.SIGRTMIN < signum < signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return signal.Signals(signum).name


def release_held_stop_signals() -> None:
    """Unblock the stop signals, once the handlers that act on them are installed. The Docker
    image starts the worker with them blocked (`deploy/docker/hold_stop_signals.c`): as PID 1 a
    signal that came before its handlers would be dropped; blocked, it waits, and arrives now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
