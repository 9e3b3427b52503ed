"""Which telemetry a run gets: the metrics endpoint, the progress line, both or neither.

Rule: the port (`port.py`) knows none of its implementations; this module alone builds them from
the settings, importing each only when it is asked for, so a run without them pays nothing.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from service.settings import Settings
from service.telemetry.logs import Logger, renders_json
from service.telemetry.port import Telemetry

if TYPE_CHECKING:
    from service.lifecycle.partition import Gauge, Standing

__all__ = ["telemetry_for"]


class _Fanout(Telemetry):
    """Every report to each of several telemetries."""

    def __init__(self, parts: list[Telemetry]) -> None:
        self.parts = parts

    def open(self, log: Logger) -> None:
        for part in self.parts:
            part.open(log)

    def ready(self) -> None:
        for part in self.parts:
            part.ready()

    def consumed(self, records: int, bad_records: int, nbytes: int) -> None:
        for part in self.parts:
            part.consumed(records, bad_records, nbytes)

    def reachable(self, yes: bool, why: str = "the input cannot be reached") -> None:
        for part in self.parts:
            part.reachable(yes, why)

    def partition_gauges(self, partition: object, gauges: list[Gauge]) -> None:
        for part in self.parts:
            part.partition_gauges(partition, gauges)

    def partition_gone(self, partition: object) -> None:
        for part in self.parts:
            part.partition_gone(partition)

    def checkpoint_saved(self, reason: str, seconds: float) -> None:
        for part in self.parts:
            part.checkpoint_saved(reason, seconds)

    def standing(self, standing: Standing) -> None:
        for part in self.parts:
            part.standing(standing)

    def loop_alive(self) -> None:
        for part in self.parts:
            part.loop_alive()

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _shows_progress(settings: Settings) -> bool:
    """A terminal on stderr, and logs a person reads: never for JSON logs or redirected output."""
    return not renders_json(settings.log_format) and sys.stderr.isatty()


def telemetry_for(settings: Settings) -> Telemetry:
    """The telemetry `settings` ask for: the endpoint, the progress line, both or neither."""
    parts: list[Telemetry] = []
    if settings.metrics_address:
        from service.telemetry.endpoint import serving_on
        from service.telemetry.metrics import Metrics

        serve = serving_on(settings.metrics_address)
        parts.append(Metrics(settings.checkpoint_interval, serve=serve))
    if _shows_progress(settings):
        from service.telemetry.progress_line import ProgressDisplay

        parts.append(ProgressDisplay(same_terminal=_same_terminal()))
    if not parts:
        return Telemetry()
    return parts[0] if len(parts) == 1 else _Fanout(parts)


def _same_terminal() -> bool:
    """Do stdout and stderr reach one terminal (so log lines must print above the progress)?"""
    try:
        return sys.stdout.isatty() and os.path.samestat(
            os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
        )
    except (OSError, ValueError):
        return False
