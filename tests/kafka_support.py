"""What the Kafka end-to-end tests and the chaos campaign do to the real broker besides running
the worker: create topics, delete records, read a group's commits and check them against the
topic, wait for a group to settle. Each call to the broker is one short asyncio run."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic, RecordsToDelete
from aiokafka.structs import OffsetAndMetadata

from tests.kafka_broker import Broker
from tests.oracle import expected_of
from tests.processes import WorkerProcess, worker_env

__all__ = [
    "add_partitions",
    "committed_offsets",
    "committed_states",
    "create_topic",
    "delete_records_before",
    "kafka_env",
    "mismatched_commits",
    "noisy_numbers",
    "prefix_totals",
    "settle",
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


def add_partitions(broker: Broker, topic: str, total: int) -> None:
    """Grow `topic` to `total` partitions."""
    more = {topic: NewPartitions(total_count=total)}
    _run(_with_admin(broker, lambda admin: admin.create_partitions(more)))


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


def committed_states(broker: Broker, group: str) -> dict[int, tuple[int, int, int]]:
    """Each partition's committed (offset, records, sum), from the broker."""
    states = {}
    for partition, entry in committed_offsets(broker, group).items():
        if entry.offset >= 0:
            state = json.loads(entry.metadata)
            states[partition] = (entry.offset, state["records"], int(state["sum"]))
    return states


def prefix_totals(broker: Broker, topic: str, ends: dict[int, int]) -> dict[int, tuple[int, int]]:
    """(records, sum) of each partition's messages before offset `ends[partition]`, read from
    the topic and counted by the oracle (a message's last line is whole)."""

    async def read() -> dict[int, tuple[int, int]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.plaintext, isolation_level="read_committed"
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, partition) for partition in ends]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            totals = dict.fromkeys(ends, (0, 0))
            left = {tp for tp in tps if ends[tp.partition] > 0}
            while left:
                for tp, messages in (await consumer.getmany(*left, timeout_ms=500)).items():
                    for message in messages:
                        if message.offset < ends[tp.partition]:
                            value = (
                                message.value
                                if message.value.endswith(b"\n")
                                else message.value + b"\n"
                            )
                            expected = expected_of(value)
                            records, total = totals[tp.partition]
                            totals[tp.partition] = (
                                records + expected.records,
                                total + expected.sum,
                            )
                    if await consumer.position(tp) >= ends[tp.partition]:
                        left.discard(tp)
            return totals
        finally:
            await consumer.stop()

    return _run(read())


def settle(workers: list[WorkerProcess], partitions: int, timeout: float = 90) -> None:
    """Until the members' latest assignments share every partition once and each member
    committed after its latest assignment."""
    deadline = time.monotonic() + timeout
    while True:
        latest = [w.named("partitions_assigned")[-1:] for w in workers]
        if all(latest):
            owned = [set(found[0]["partitions"]) for found in latest]
            shared = sum(map(len, owned)) == partitions == len(set().union(*owned))
            committed = all(
                _committed_since(w, found[0]) for w, found in zip(workers, latest, strict=True)
            )
            if shared and committed:
                return
        assert time.monotonic() < deadline, [w.tail() for w in workers]
        time.sleep(0.2)


def _committed_since(worker: WorkerProcess, assigned: dict[str, Any]) -> bool:
    events = worker.named("checkpoint_saved")
    return not assigned["partitions"] or any(e["timestamp"] > assigned["timestamp"] for e in events)


def mismatched_commits(
    broker: Broker, topic: str, group: str, partitions: int, timeout: float = 30
) -> dict[int, tuple[tuple[int, int], tuple[int, int]]]:
    """Each partition whose committed (records, sum) is not what its first `offset` messages
    hold: {partition: (committed, from the topic)}; waits for every partition's first commit."""
    deadline = time.monotonic() + timeout
    while len(states := committed_states(broker, group)) < partitions:
        assert time.monotonic() < deadline, f"committed after {timeout:.0f} s: {sorted(states)}"
        time.sleep(0.5)
    prefixes = prefix_totals(broker, topic, {p: state[0] for p, state in states.items()})
    return {p: (state[1:], prefixes[p]) for p, state in states.items() if state[1:] != prefixes[p]}
