"""Structured logs: one JSON object per line on stdout, or a console rendering on a terminal.

Rule 1: one processor chain for structlog and for the standard library's `logging`.
Rule 2: events are short snake_case names with fields; every line has `timestamp` (ISO 8601,
        UTC), `level` and `event`.
Rule 3: writing a log line never raises. A line that cannot be written (EIO, ENOSPC) is lost; a
        closed reader (`run | head`, EPIPE) sends every later line to /dev/null and tells the
        hook given to `on_output_closed`, once: `run` then stops gracefully.
Rule 4: tracebacks never show local variables: a secret may be one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from service.core.decimal_text import decimal_of, exact_json

if TYPE_CHECKING:
    import structlog

__all__ = [
    "Logger",
    "configure_logging",
    "last_words",
    "on_output_closed",
    "renders_json",
    "route_output",
]

Logger = Any  # structlog's bound loggers are dynamically typed

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_closed_hook: Callable[[], None] | None = None
_as_json = True  # the format `configure_logging` chose, for `last_words`
_closed_once = threading.Lock()


def on_output_closed(hook: Callable[[], None] | None) -> None:
    """Call `hook` (from whichever thread logged) when the log's reader goes away; None: nobody."""
    global _closed_hook
    _closed_hook = hook


class _LogStream:
    """A text stream for log lines whose writes never raise (Rule 3)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self._guarded(self.stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, write: Callable[..., object], *args: str) -> None:
        try:
            write(*args)
        except (OSError, ValueError) as error:  # ValueError: the stream was closed
            if getattr(error, "errno", None) == errno.EPIPE:
                self._reader_gone()

    def _reader_gone(self) -> None:
        # What the stream still buffers, and every later line, goes nowhere instead of failing.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
        if _closed_once.acquire(blocking=False) and _closed_hook is not None:
            _closed_hook()


def _long_ints_as_text(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Huge integers (a sum) as their digits, written in subquadratic time, not by repr()."""
    return {
        key: decimal_of(value) if type(value) is int and value.bit_length() > 64 else value
        for key, value in event.items()
    }


def renders_json(log_format: str) -> bool:
    """JSON lines, or a console rendering for a person (`auto`: on a terminal)?"""
    return log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())


def _import_structlog(as_json: bool) -> None:
    """Import structlog; for JSON logs, without rich.

    `structlog.dev` imports rich (and pygments) on import, for console tracebacks only. That is a
    third of `run`'s start-up, and JSON logs never render that way.
    """
    global structlog
    hide_rich = as_json and "rich" not in sys.modules
    if hide_rich:
        sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails quietly
    try:
        import structlog
    finally:
        if hide_rich:
            del sys.modules["rich"]


def configure_logging(log_format: str, log_level: str) -> Logger:
    """Configure structlog and the standard library's logging; return the worker's logger."""
    global _as_json
    as_json = _as_json = renders_json(log_format)
    _import_structlog(as_json)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if as_json:
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer(exact_json)
    else:
        shared.append(_long_ints_as_text)
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    level = _LEVELS[log_level]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _LogStream(sys.stdout))),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_LogStream(sys.stdout))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return structlog.get_logger("checkpoint_worker")


def route_output(stream: TextIO) -> None:
    """Write log lines to `stream` from now on (the progress line's console while it shows)."""
    output = cast(TextIO, _LogStream(stream))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(output))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(_LogStream(stream))


def last_words(lines: list[tuple[str, str, dict[str, Any]]], exit_code: int) -> NoReturn:
    """Write (event, level, fields) lines and end the process with `exit_code` at once.

    For a signal handler or the shutdown watchdog: the code they interrupt may hold the logger's
    lock, or be stuck writing to a stalled reader, so the lines are written straight to stdout's
    descriptor by a thread of their own, given a moment, and the process ends either way.
    """
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = ""
    for event, level, fields in lines:
        if _as_json:
            text += exact_json({**fields, "event": event, "level": level, "timestamp": now}) + "\n"
        else:
            shown = " ".join(f"{key}={value}" for key, value in fields.items())
            text += f"{now} [{level}] {event} {shown}\n"
    data = text.encode()

    def write() -> None:
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), data)

    with contextlib.suppress(RuntimeError, ValueError):  # interpreter teardown, closed stdout
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(0.2)
    os._exit(exit_code)
