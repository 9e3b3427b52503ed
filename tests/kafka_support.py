"""What the Kafka end-to-end tests do to the real broker besides running the worker: create
topics, delete records, read a group's commits. Each call is one short asyncio run."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.structs import OffsetAndMetadata

from tests.kafka_broker import Broker
from tests.processes import worker_env

__all__ = [
    "committed_offsets",
    "create_topic",
    "delete_records_before",
    "kafka_env",
    "noisy_numbers",
]

T = TypeVar("T")


def _run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


async def _with_admin(broker: Broker, action: Any) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.plaintext)
    await admin.start()
    try:
        return await action(admin)
    finally:
        await admin.close()


def create_topic(broker: Broker, partitions: int) -> str:
    """A new topic with a unique name and `partitions` partitions."""
    name = f"numbers-{uuid.uuid4().hex[:10]}"
    _run(_with_admin(broker, lambda admin: admin.create_topics([NewTopic(name, partitions, 1)])))
    return name


def delete_records_before(broker: Broker, topic: str, partition: int, offset: int) -> None:
    """Move a partition's log start to `offset`, as retention would."""
    tp = TopicPartition(topic, partition)
    _run(_with_admin(broker, lambda admin: admin.delete_records({tp: RecordsToDelete(offset)})))


def committed_offsets(broker: Broker, group: str) -> dict[int, OffsetAndMetadata]:
    """The group's committed offsets (and metadata), by partition number."""
    found = _run(_with_admin(broker, lambda admin: admin.list_consumer_group_offsets(group)))
    return {tp.partition: entry for tp, entry in found.items()}


def kafka_env(broker: Broker, topic: str, group: str, **extra: str) -> dict[str, str]:
    """A worker's environment for `topic` and `group` on the test broker."""
    return worker_env(
        WORKER_SOURCE="kafka",
        WORKER_KAFKA_BOOTSTRAP_SERVERS=broker.plaintext,
        WORKER_KAFKA_TOPIC=topic,
        WORKER_KAFKA_GROUP=group,
        WORKER_KAFKA_SESSION_TIMEOUT="3",
        **extra,
    )


def noisy_numbers(count: int, seed: int) -> bytes:
    """Deterministic input with signs, padding, CRLF, blank and bad lines, a last line
    without '\\n'."""
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        value = rng.randrange(-(10**9), 10**9)
        if index % 97 == 13:
            lines.append(rng.choice([b"oops", b"1.5", b" ", b"", b"0x1F", b"\xff\xfe", b"1_000"]))
        elif index % 89 == 7:
            lines.append(f" +{abs(value)}\t\r".encode())
        else:
            lines.append(str(value).encode())
    return b"\n".join(lines)
