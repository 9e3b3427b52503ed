"""What the Kafka source reads of aiokafka beyond its public API, held to a real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from service.errors import WorkerError
from service.sources.kafka.client import group_generation
from tests.kafka_broker import Broker
from tests.kafka_support import create_topic

pytestmark = pytest.mark.kafka


async def _generations(broker: Broker, topic: str) -> tuple[int, int]:
    """A member's generation once it holds partitions, and after a second member joined (a
    rebalance makes a new generation)."""
    group = f"generation-{uuid.uuid4().hex[:8]}"

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.plaintext,
            group_id=group,
            session_timeout_ms=6000,
            heartbeat_interval_ms=200,
        )

    first, second = member(), member()
    await first.start()
    try:
        while not first.assignment():
            await first.getmany(timeout_ms=200)
        joined = group_generation(first)
        await second.start()
        try:
            while not second.assignment() or group_generation(first) == joined:
                await asyncio.gather(first.getmany(timeout_ms=200), second.getmany(timeout_ms=200))
            return joined, group_generation(first)
        finally:
            await second.stop()
    finally:
        await first.stop()


def test_group_generation_follows_the_group(kafka: Broker) -> None:
    """The generation is read where the group keeps it: positive while the member holds
    partitions, and new after each rebalance."""
    topic = create_topic(kafka, partitions=2)
    joined, after = asyncio.run(asyncio.wait_for(_generations(kafka, topic), 60))
    assert joined >= 1
    assert after > joined


def test_an_aiokafka_without_the_generation_is_an_error() -> None:
    """A consumer that does not carry the generation where it is read is one clear error."""
    with pytest.raises(WorkerError, match="generation"):
        group_generation(object())
