"""The Kafka source for the worker's lifecycle (`partition.py`'s protocol).

Rule 1: the group hands partitions out and takes them back at any time (rebalances), so the
        lifecycle sees one partition for the whole membership (`GroupMembership`, labelled with
        the topic); the Kafka partitions this process owns live inside `GroupMember`, which
        loads, commits and drops their states (`group.py`).
Rule 2: `save` is the group commit of every changed owned partition (every one, for the final
        and completion saves); the state is in the broker, never in a local file.
Rule 3: not following, the run's target is the topic's end offsets at start-up; the partition
        is DONE once the group's committed offsets reached them (whoever committed them), and
        the result then holds the group's totals. A member whose own partitions reached their
        targets commits them at once and looks at the group, rather than wait for the timer.
Rule 4: the brokers may be away for a while (`outage.py`): start-up waits for them, timer commits
        wait for them, and a stop meanwhile gives the final commit up at once.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import anyio
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.core.decimal_text import decimal_of
from service.core.parsing import Parsed
from service.core.position import Periodic, Position
from service.health import heartbeat_path
from service.lifecycle.partition import Gauge, Partition, Reachable, ReadStatus, Standing, Step
from service.settings import Settings
from service.sources.kafka.client import ANSWER_TIMEOUT, describe_error
from service.sources.kafka.group import MAX_RECORDS, GroupMember, name_of
from service.sources.kafka.group_totals import GroupState, read_group_state
from service.sources.kafka.outage import BrokerWatch
from service.storage.checkpoint import total_of
from service.telemetry.logs import Logger

__all__ = ["KafkaSource"]

# Stopping, the final commit and leaving the group each get this share of shutdown_timeout, so
# both fit before the watchdog ends the process (`worker.py`). Mid-rebalance either can wait on
# the group far longer; a final commit that does not fit is given up as a fenced one is.
_SHUTDOWN_SHARE = 0.4
# A timer commit the brokers do not answer in this time is tried again at the next tick.
_TIMER_COMMIT_WAIT = 5.0


class GroupMembership:
    """All the Kafka partitions this member owns, as one partition of the lifecycle."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source
        # Paced, one message at a time: a message can hold many lines, and the pace is in lines.
        self._max_messages = 1 if source.settings.max_rate > 0 else MAX_RECORDS
        self._checks = Periodic(source.settings.checkpoint_interval, anyio.current_time())

    @property
    def label(self) -> str:
        return self._source.settings.kafka_topic

    @property
    def position(self) -> Position:
        return total_of(list(self._source.member.read_states().values()))

    def gauges(self) -> list[Gauge]:
        return self._source.member.gauges()

    async def next_batch(self) -> Step:
        source = self._source
        if source.own_targets_reached():
            # Nothing of this run is left to read here: commit it now, not on the timer, and
            # look at the group at once (then every poll_interval while others still read).
            await source.member.commit("targets_reached")
            done = await source.group_done()
            progress = ReadStatus.DONE if done else ReadStatus.CAUGHT_UP
            return Step(Parsed(self.position), progress, Position())
        read = await source.member.read(self._max_messages)
        if self._checks.due(anyio.current_time()) and await source.group_done():
            return Step(Parsed(self.position), ReadStatus.DONE, read)
        progress = ReadStatus.READING if read.offset else ReadStatus.CAUGHT_UP
        return Step(Parsed(self.position), progress, read)

    async def close(self) -> None:
        pass


class KafkaSource:
    """`kafka_topic` read through `kafka_group`: the state of each partition is the group's."""

    def __init__(self, settings: Settings, log: Logger) -> None:
        self.settings = settings
        self.log = log
        self.outages = BrokerWatch(settings, log)
        self.member = GroupMember(settings, log, self.outages)
        self._targets: dict[TopicPartition, int] | None = None
        self._group: GroupState | None = None  # once the group reached the targets
        self._heartbeat = heartbeat_path(settings.checkpoint, os.getpid())

    def describe(self) -> str:
        return f"kafka:{self.settings.kafka_topic} (group {self.settings.kafka_group})"

    def acquire(self) -> None:
        """Nothing to lock: the group's generation makes a member the only one committing."""

    async def start(self) -> list[Partition]:
        """Join the group (assignments arrive while reading); not following, take the target."""
        numbers = await self.member.start()
        if not self.settings.follow:
            consumer = self.member.consumer
            tps = [TopicPartition(self.settings.kafka_topic, n) for n in numbers]
            ends = await self.outages.reach(
                lambda: consumer.end_offsets(tps), "read Kafka end offsets"
            )
            self._targets = dict(ends)
            self.log.info("target_offsets", partitions={name_of(tp): e for tp, e in ends.items()})
        return [GroupMembership(self)]

    async def watch(self, reachable: Reachable) -> None:
        await self.outages.run(reachable)

    def own_targets_reached(self) -> bool:
        """Not following: does this member own partitions, each read up to its target?"""
        owned = self.member.owned
        targets = self._targets
        if targets is None or not owned:
            return False
        return all(position.offset >= targets.get(tp, 0) for tp, position in owned.items())

    async def group_done(self) -> bool:
        """Not following: have the group's commits reached this run's target?"""
        if self._targets is None or not self.outages.available:
            return False
        admin, partitions = self.member.admin, list(self._targets)
        # One look, bounded (the coordinator's address, then the commits): no answer is an
        # outage, which the broker watch reports and waits out; the next look is a check later.
        group: GroupState | None = None
        with anyio.move_on_after(2 * ANSWER_TIMEOUT):
            try:
                group = await read_group_state(admin, self.settings.kafka_group, partitions)
            except KafkaError as error:  # the brokers answered: not an outage, said each time
                self.log.warning("group_check_failed", message=describe_error(error))
        if group is None:
            return False
        if group.reached(self._targets):
            self._group = group
        return self._group is not None

    async def discover(self) -> list[Partition]:
        return []  # the group brings partitions to `GroupMember`, not the lifecycle

    def park(self, partition: Partition) -> None:
        """Never asked: a Kafka partition waits in its consumer, never parked."""

    def retire(self, partition: Partition) -> None:
        pass

    def totals(self) -> Position:
        """The group's totals once it is done; until then, what this member owns."""
        if self._group is not None:
            return self._group.totals()
        return total_of(list(self.member.read_states().values()))

    def input_size(self) -> int:
        """Messages up to the log end offsets: of the owned partitions, the group's once done."""
        if self._group is not None:
            return self._group.totals().offset
        return self.member.log_ends()

    def changed_since_save(self) -> bool:
        return self.member.changed()

    def standing(self) -> Standing:
        known = self.member.consumer.partitions_for_topic(self.settings.kafka_topic)
        return Standing(self.member.unsaved_records(), len(known) if known else None)

    async def save(self, reason: str, *, completed: bool = False) -> bool:
        # The final and the completion commits cover every owned partition, changed or not.
        if reason == "timer":
            # Not while the brokers are away, and never long: the timer also beats the heart.
            if not self.outages.available:
                return False
            with anyio.move_on_after(_TIMER_COMMIT_WAIT):
                return await self.member.commit(reason)
            return False
        if reason != "shutdown":
            return await self.member.commit(reason, force=True)
        if not self.outages.available:
            self.member.give_up(reason, "the brokers are unavailable")
            return False
        with anyio.move_on_after(self.settings.shutdown_timeout * _SHUTDOWN_SHARE):
            return await self.member.commit(reason, force=True)
        self.member.give_up(reason, "the group did not take the final commit in time")
        return False

    def heartbeat(self) -> None:
        self._heartbeat.write_text(f"{os.getpid()}\n")

    def report(self) -> dict[str, Any]:
        total = self.totals()
        states = self._group.partitions if self._group is not None else self.member.read_states()
        return {
            "input": self.describe(),
            "group": self.settings.kafka_group,
            **asdict(total),
            "partitions": {
                name_of(tp): {
                    "offset": p.offset,
                    "records": p.records,
                    "bad_records": p.bad_records,
                    "sum": decimal_of(p.sum),
                }
                for tp, p in sorted(states.items())
            },
        }

    async def close(self) -> None:
        """Leave the group (after the final commit), bounded; remove the heartbeat."""
        with anyio.move_on_after(self.settings.shutdown_timeout * _SHUTDOWN_SHARE):
            await self.member.close()
        self._heartbeat.unlink(missing_ok=True)
