"""One consumer-group member's reading, at the seams the broker tests cannot aim at reliably."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from service.core.position import Position
from service.settings import Settings
from service.sources.kafka.group import GroupMember
from service.sources.kafka.outage import BrokerWatch
from service.telemetry.logs import configure_logging

TOPIC = "numbers"


class _RebalancingConsumer:
    """Stands in for the consumer's `getmany`: asking for one partition lets a rebalance run
    that revokes every partition from `member`, as a real one may during that await."""

    def __init__(self, member: GroupMember, group_wide: dict[TopicPartition, list[Any]]) -> None:
        self._member = member
        self._group_wide = group_wide
        self.asked: list[tuple[TopicPartition, ...]] = []

    async def getmany(self, *partitions: TopicPartition, **_options: Any) -> Any:
        self.asked.append(partitions)
        if partitions:
            self._member.owned.clear()
            return {}
        return self._group_wide


def test_a_rebalance_during_a_paced_fetch_leaves_the_member_reading() -> None:
    """A paced fetch awaits the fresh partitions one by one; a rebalance that takes them all
    meanwhile must not fail the worker: the fetch goes on group-wide."""
    settings = Settings(input=(f"kafka:{TOPIC}",), kafka_bootstrap_servers="localhost:9")
    log = configure_logging("json", "error")

    async def fetch() -> tuple[dict[TopicPartition, list[Any]], list[tuple[TopicPartition, ...]]]:
        member = GroupMember(settings, log, BrokerWatch(settings, log))
        fresh = TopicPartition(TOPIC, 0)
        member.owned[fresh] = Position()
        member._fresh.add(fresh)
        group_wide: dict[TopicPartition, list[Any]] = {TopicPartition(TOPIC, 1): []}
        consumer = _RebalancingConsumer(member, group_wide)
        real, member.consumer = member.consumer, consumer
        try:
            return await member._fetch(max_messages=10), consumer.asked
        finally:
            member.consumer = real
            await member.close()

    batches, asked = asyncio.run(fetch())
    assert asked == [(TopicPartition(TOPIC, 0),), ()]
    assert batches == {TopicPartition(TOPIC, 1): []}
