"""`run` with `source = "kafka"`: start up, read and commit on the timer, shut down.

Start up: connect and join the group (assignments arrive while reading); not following, take
the topic's end offsets as this run's target. Main loop: read, pace, and on the timer commit
what changed and, not following, see whether the group's commits reached the target. Shut down:
the final commit of every owned partition (bounded by `shutdown_timeout`), leave the group, one
error line if something failed, `worker_stopped`.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import anyio
import anyio.abc
from aiokafka import TopicPartition

from .. import __version__
from ..decimal_text import decimal_of
from ..errors import BadRecordFound, UnexpectedError, WorkerError
from ..files import atomic_write
from ..health import heartbeat_path
from ..logs import Logger
from ..settings import Settings
from ..shutdown import exit_after, exit_at_next_signal, listen_for_stop_signals, report_failure
from ..state import Pacer, Periodic
from .client import connect, partitions_of
from .group import GroupMember, name_of
from .group_state import GroupState, read_group_state

__all__ = ["run_kafka"]

_HEARTBEAT_INTERVAL = 1.0
_MAX_MESSAGES = 500  # messages taken from one fetch


def _result_of(settings: Settings, group: GroupState) -> dict[str, Any]:
    totals = group.totals()
    return {
        "input": f"kafka:{settings.kafka_topic}",
        "group": settings.kafka_group,
        "offset": totals.offset,
        "lines": totals.lines,
        "records": totals.records,
        "bad_records": totals.bad_records,
        "sum": totals.sum,
        "partitions": {
            name_of(tp): {
                "offset": p.offset,
                "records": p.records,
                "bad_records": p.bad_records,
                "sum": decimal_of(p.sum),
            }
            for tp, p in sorted(group.partitions.items())
        },
    }


class _KafkaRun:
    def __init__(self, settings: Settings, log: Logger) -> None:
        self.settings = settings
        self.log = log
        self.member = GroupMember(settings, log)
        self.started = False
        self.completed = False
        self.failure: WorkerError | None = None
        self.stop_signal: int | None = None
        self.targets: dict[TopicPartition, int] | None = None
        self.heartbeat = heartbeat_path(settings.checkpoint, os.getpid())

    async def run(self, early_signals: list[int]) -> None:
        async with anyio.create_task_group() as tasks:
            stop = functools.partial(self._request_shutdown, scope=tasks.cancel_scope)
            await tasks.start(listen_for_stop_signals, stop, early_signals)
            tasks.start_soon(self._beat)
            try:
                await self._start()
                await self._consume()
            except WorkerError as error:
                self.failure = self.failure or error
            except Exception as error:  # a defect: still one error line and a clean stop
                self.failure = self.failure or UnexpectedError(error)
            tasks.cancel_scope.cancel()

    async def _start(self) -> None:
        await self.member.start()
        self.started = True
        if not self.settings.follow:
            consumer = self.member.consumer
            topic = self.settings.kafka_topic
            numbers = await partitions_of(self.member.admin, self.settings)
            tps = [TopicPartition(topic, n) for n in numbers]
            ends = await connect(
                lambda: consumer.end_offsets(tps), self.settings, "read Kafka end offsets"
            )
            self.targets = dict(ends)
            self.log.info("target_offsets", partitions={name_of(tp): e for tp, e in ends.items()})

    async def _consume(self) -> None:
        settings = self.settings
        timer = Periodic(settings.checkpoint_interval, time.monotonic())
        pacer = Pacer(settings.max_rate)
        # Paced, one message at a time: a message can hold many lines, and the pace is in lines.
        max_messages = 1 if settings.max_rate > 0 else _MAX_MESSAGES
        while True:
            added = await self.member.read(max_messages)
            resume_at = time.monotonic() + pacer.delay_after(added, time.monotonic())
            while True:  # the timer keeps its period through a long pause
                now = time.monotonic()
                if timer.due(now):
                    await self.member.commit("timer")
                    if self.targets is not None and await self._group_done():
                        return
                    now = time.monotonic()
                if resume_at <= now:
                    break
                await anyio.sleep(min(resume_at, timer.next_due) - now)

    async def _group_done(self) -> bool:
        assert self.targets is not None
        group = await read_group_state(
            self.member.admin, self.settings.kafka_group, list(self.targets)
        )
        if not group.reached(self.targets):
            return False
        result = _result_of(self.settings, group)
        data = json.dumps(result, separators=(",", ":")).encode() + b"\n"
        await anyio.to_thread.run_sync(atomic_write, self.settings.result, [data])
        self.completed = True
        self.log.info(
            "completed",
            sum=str(result["sum"]),
            records=result["records"],
            bad_records=result["bad_records"],
        )
        return True

    async def _beat(self) -> None:
        while True:
            await anyio.to_thread.run_sync(self.heartbeat.write_text, f"{os.getpid()}\n")
            await anyio.sleep(_HEARTBEAT_INTERVAL)

    def _request_shutdown(self, signum: int, scope: anyio.CancelScope) -> None:
        self.stop_signal = signum
        exit_at_next_signal()
        exit_after(self.settings.shutdown_timeout, self.log)
        self.log.info("shutdown_requested", signal=signal.Signals(signum).name)
        scope.cancel()

    async def shut_down(self) -> tuple[int, str]:
        code, reason = (0, "completed") if self.completed else (0, "shutdown")
        if self.failure is not None:
            code, reason = self.failure.exit_code, "error"
        with anyio.CancelScope(shield=True):
            # 1. The final commit of every owned partition, before `stop()` (which does not
            #    call the revoke listener); under a bad record, the state before its message.
            worth = self.failure is None or isinstance(self.failure, BadRecordFound)
            if self.started and worth:
                with anyio.move_on_after(self.settings.shutdown_timeout):
                    try:
                        await self.member.commit("shutdown", force=True)
                    except WorkerError as error:
                        self.failure = self.failure or error
                        code, reason = error.exit_code, "error"
            # 2. The one error line, then leave the group and remove the heartbeat.
            report_failure(self.log, self.failure)
            with anyio.move_on_after(self.settings.shutdown_timeout):
                await self.member.close()
            self.heartbeat.unlink(missing_ok=True)
        return code, reason


async def run_kafka(settings: Settings, log: Logger, early_signals: list[int]) -> int:
    """Run a member of the Kafka consumer group; return the process exit code."""
    log.info(
        "worker_started",
        source="kafka",
        topic=settings.kafka_topic,
        group=settings.kafka_group,
        pid=os.getpid(),
        version=__version__,
        follow=settings.follow,
    )
    run = _KafkaRun(settings, log)
    try:
        await run.run(early_signals)
    finally:
        code, reason = await run.shut_down()
    log.info("worker_stopped", exit_code=code, reason=reason)
    return code
