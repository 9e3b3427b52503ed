"""Structured logs: one JSON object per line on stdout, or a console rendering on a terminal.

Rule 1: one processor chain for structlog and for the standard library's `logging`.
Rule 2: events are short snake_case names with fields; every line has `timestamp` (ISO 8601,
        UTC), `level` and `event`.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import structlog

__all__ = ["Logger", "configure_logging", "renders_json", "route_output"]

Logger = Any  # structlog's bound loggers are dynamically typed

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
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
    as_json = renders_json(log_format)
    _import_structlog(as_json)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if as_json:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    level = _LEVELS[log_level]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
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
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
