"""Structured logs: one JSON object per line on stdout, or a console rendering on a terminal.

Rule 1: one processor chain for structlog and for the standard library's `logging`.
Rule 2: events are short snake_case names with fields; every line has `timestamp` (ISO 8601,
        UTC), `level` and `event`.
Rule 3: writing a log line never raises. A line that cannot be written (EIO, ENOSPC) is lost; a
        closed reader (`run | head`, EPIPE) sends every later line to /dev/null and tells the
        hook given to `on_output_closed`, once: `run` then stops gracefully.
Rule 4: tracebacks never show local variables: a secret may be one.
Rule 5: a reader that stops reading (a paused pager, a stuck log collector) holds the writer back,
        as Docker's default blocking log mode does, until a stop is asked for: from then on a
        line waits at most `READER_GRACE` seconds (a quarter of `shutdown_timeout` if less) for
        room, then is dropped, so the worker can still save its final checkpoint and exit. A
        long line cut short that way is ended with a newline before the next one, so a reader
        never sees two lines run together.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import logging
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

from service.core.decimal_text import decimal_of, exact_json

if TYPE_CHECKING:
    import structlog

__all__ = [
    "Logger",
    "configure_logging",
    "last_words",
    "limit_reader_grace",
    "on_output_closed",
    "rendered_last_words",
    "renders_json",
    "route_output",
    "stop_waiting_for_reader",
]

Logger = Any  # structlog's bound loggers are dynamically typed

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


READER_GRACE = 1.0  # seconds a line waits for a stalled reader once a stop is asked for
_POLL_SLICE_MS = 100  # how often a waiting write looks whether a stop was asked for
_PIPE_BUF = select.PIPE_BUF  # at most this much per write: it fits once poll says there is room

_closed_hook: Callable[[], None] | None = None
_reader_went_away = False  # a hook set later hears of it at once: the first line may be the one
_as_json = True  # the format `configure_logging` chose, for `last_words`
_closed_once = threading.Lock()
_give_up_at: float | None = None  # monotonic time after which a stalled reader is not waited for
_write_lock = threading.Lock()  # whole lines, whichever thread logs


_reader_grace = READER_GRACE


def limit_reader_grace(seconds: float) -> None:
    """Wait at most `seconds` (if less than `READER_GRACE`) for a stalled reader after a stop:
    a short `shutdown_timeout` must leave its time to the final checkpoint, not to a log line."""
    global _reader_grace
    _reader_grace = min(READER_GRACE, seconds)


def stop_waiting_for_reader() -> None:
    """A stop was asked for: wait at most the reader's grace more for a reader that does not
    read.

    Safe in a signal handler: it only sets a time."""
    global _give_up_at
    if _give_up_at is None:
        _give_up_at = time.monotonic() + _reader_grace


def on_output_closed(hook: Callable[[], None] | None) -> None:
    """Call `hook` (from whichever thread logged) when the log's reader goes away; None: nobody."""
    global _closed_hook
    _closed_hook = hook
    if hook is not None and _reader_went_away:  # gone before anyone listened
        hook()


class _LogStream:
    """A text stream for log lines whose writes never raise (Rule 3) and stop waiting for a
    stalled reader once a stop is asked for (Rule 5).

    A stream with a descriptor of its own (stdout) is written with `os.write`, a whole line at
    a time, after `poll` says there is room; a stream without one (the progress line's console)
    through its own `write`.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending = ""
        self.fd: int | None = None
        self.may_stall = False
        self.line_cut = False  # a line was given up part way: the output holds it without its end
        if isinstance(stream, io.TextIOWrapper):
            try:
                stream.flush()  # what it holds goes out before the lines written past it
                self.fd = stream.fileno()
                self.may_stall = not stat.S_ISREG(os.fstat(self.fd).st_mode)
            except (OSError, ValueError):
                self.fd = None

    def write(self, text: str) -> int:
        self.pending += text
        if text.endswith("\n"):
            self.flush()
        return len(text)

    def flush(self) -> None:
        text, self.pending = self.pending, ""
        if not text:
            return
        if self.fd is None:
            self._guarded(self.stream.write, text)
            self._guarded(self.stream.flush)
            return
        data = text.encode(self.stream.encoding or "utf-8", "backslashreplace")
        with _write_lock:
            self._guarded(self._send, data)

    def _send(self, data: bytes) -> None:
        assert self.fd is not None
        if self.line_cut:  # the last line was given up half written: end it before this one
            data = b"\n" + data
        view = memoryview(data)
        while view:
            if self.may_stall and not _room_in(self.fd):
                return  # a stop was asked for and the reader still does not read: dropped
            try:
                view = view[os.write(self.fd, view[:_PIPE_BUF]) :]
            except BlockingIOError:  # a descriptor someone made non-blocking: wait for room
                continue
            # Part of this line is out: until all of it is, the output holds a line without its
            # end, whether the rest is dropped above or a write fails (a full disk).
            self.line_cut = bool(view)

    def _guarded(self, write: Callable[..., object], *args: Any) -> None:
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
        global _reader_went_away
        if _closed_once.acquire(blocking=False):
            _reader_went_away = True
            if _closed_hook is not None:
                _closed_hook()


def _room_in(fd: int) -> bool:
    """Wait until `fd` takes a write without blocking (or has failed: the write tells how);
    False once a stop was asked for and the grace has run out."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while True:
        waited_enough = _give_up_at is not None and time.monotonic() >= _give_up_at
        if poller.poll(0 if waited_enough else _POLL_SLICE_MS):
            return True
        if waited_enough:
            return False


def _long_ints_as_text(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Huge integers (a sum) as their digits, written in subquadratic time, not by repr()."""
    return {
        key: decimal_of(value) if type(value) is int and value.bit_length() > 64 else value
        for key, value in event.items()
    }


_QUOTED_IF_IN_TEXT = frozenset(" \t=\"'")


def _console_value(value: object) -> str:
    """A field's value on the console: text as it is, quoted when it holds a space, `=` or a
    quote. A name is shown escaped once, as in JSON logs and `status`; repr() would escape
    its backslashes again."""
    if isinstance(value, str):
        return f"'{value}'" if _QUOTED_IF_IN_TEXT.intersection(value) else value
    return repr(value)


def _console_renderer() -> Any:
    renderer = structlog.dev.ConsoleRenderer(
        colors=_colours_wanted(), exception_formatter=structlog.dev.plain_traceback
    )
    for column in renderer.columns:
        if column.key == "" and isinstance(column.formatter, structlog.dev.KeyValueColumnFormatter):
            column.formatter.value_repr = _console_value  # the fields not given a column
    return renderer


def renders_json(log_format: str) -> bool:
    """JSON lines, or a console rendering for a person (`auto`: on a terminal)?"""
    return log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())


def _colours_wanted() -> bool:
    """Colours for a person at a terminal, unless NO_COLOR asks for none (no-color.org); never
    escape codes in a file or a pipe."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


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
        renderer = _console_renderer()
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


def rendered_last_words(lines: list[tuple[str, str, dict[str, Any]]], now: str) -> bytes:
    """(event, level, fields) lines as the configured format writes them, stamped `now`."""
    text = ""
    for event, level, fields in lines:
        if _as_json:
            text += exact_json({**fields, "event": event, "level": level, "timestamp": now}) + "\n"
        else:
            shown = " ".join(f"{key}={value}" for key, value in fields.items())
            text += f"{now} [{level}] {event} {shown}\n"
    return text.encode()


def last_words(lines: list[tuple[str, str, dict[str, Any]]], exit_code: int) -> NoReturn:
    """Write (event, level, fields) lines and end the process with `exit_code` at once.

    For a signal handler or the shutdown watchdog: the code they interrupt may hold the logger's
    lock, or be stuck writing to a stalled reader, so the lines are written straight to stdout's
    descriptor by a thread of their own, given a moment, and the process ends either way.
    """
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = rendered_last_words(lines, now)

    def write() -> None:
        with contextlib.suppress(OSError):
            os.write(sys.stdout.fileno(), data)

    with contextlib.suppress(RuntimeError, ValueError):  # interpreter teardown, closed stdout
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(0.2)
    os._exit(exit_code)
