"""`publish`, and `status` / `reset` with `source = "kafka"`, each on its own event loop
(`run` goes through the lifecycle, `worker.py`, with the Kafka source)."""

from __future__ import annotations

import argparse
import functools
from typing import Any

import anyio

from service.errors import UsageError
from service.settings import Settings
from service.telemetry.logs import Logger

__all__ = ["run_kafka_command"]


def run_kafka_command(args: argparse.Namespace, settings: Settings, log: Logger) -> int:
    """Run `publish`, or `status` / `reset` of the group, against Kafka; return the exit code."""
    work: Any
    if args.command == "publish":
        from service.sources.kafka.publish import publish

        work = publish, settings, args.lines_per_message, log
    elif args.command == "status":
        from service.sources.kafka.commands import kafka_status

        work = (functools.partial(kafka_status, settings, as_json=args.json),)
    elif args.command == "reset":
        from service.sources.kafka.commands import kafka_reset

        work = kafka_reset, settings, log
    else:
        raise UsageError(f"`{args.command}` has no meaning with source = kafka")
    return int(anyio.run(*work, backend="asyncio"))
