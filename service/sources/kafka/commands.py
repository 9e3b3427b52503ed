"""`status` and `reset` with `source = "kafka"`: the group's committed state, read from the broker.

Rule 1: `status` shows each partition's committed state and its lag (log end minus committed
        offset), and the group's totals; nothing is read from local files.
Rule 2: `reset` deletes the group's committed offsets (the group itself), and refuses while the
        group has members: their next commit would bring the old states back.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.admin import DeleteGroupsRequest

from service.core.decimal_text import decimal_of
from service.errors import WorkerError
from service.settings import Settings
from service.sources.kafka.client import admin_client, client_options, connect, partitions_of
from service.sources.kafka.group import name_of
from service.sources.kafka.group_totals import read_group_state
from service.telemetry.logs import Logger

__all__ = ["kafka_reset", "kafka_status"]

_NON_EMPTY_GROUP = 68
_GROUP_ID_NOT_FOUND = 69


async def _report(settings: Settings) -> dict[str, Any]:
    async with admin_client(settings) as admin:
        numbers = await partitions_of(admin, settings)
        tps = [TopicPartition(settings.kafka_topic, n) for n in numbers]
        group = await connect(
            lambda: read_group_state(admin, settings.kafka_group, tps),
            settings,
            "read the consumer group's commits from Kafka",
        )
        described = await connect(
            lambda: admin.describe_consumer_groups([settings.kafka_group]),
            settings,
            "describe the Kafka consumer group",
        )
        members = len(described[0].groups[0][5]) if described and described[0].groups else 0
    consumer = AIOKafkaConsumer(**client_options(settings), isolation_level="read_committed")
    await connect(consumer.start, settings, "connect to Kafka")
    try:
        ends = await connect(lambda: consumer.end_offsets(tps), settings, "read Kafka end offsets")
    finally:
        await consumer.stop()
    totals = group.totals()
    lag = {tp: max(0, ends[tp] - group.partitions[tp].offset) for tp in tps}
    return {
        "source": "kafka",
        "topic": settings.kafka_topic,
        "group": settings.kafka_group,
        "members": members,
        **asdict(totals),
        "lag": sum(lag.values()),
        "completed": not any(lag.values()),
        "partitions": [
            {
                "partition": name_of(tp),
                "offset": group.partitions[tp].offset,
                "end_offset": ends[tp],
                "lag": lag[tp],
                "records": group.partitions[tp].records,
                "bad_records": group.partitions[tp].bad_records,
                "sum": decimal_of(group.partitions[tp].sum),
                **({"unreadable": group.unreadable[tp]} if tp in group.unreadable else {}),
            }
            for tp in tps
        ],
    }


async def kafka_status(settings: Settings, *, as_json: bool) -> int:
    """Print the group's committed state, per partition and in total."""
    report = await _report(settings)
    if as_json:
        print(json.dumps(report))
        return 0
    print(f"topic {report['topic']}, group {report['group']}, {report['members']} member(s)")
    print(f"{'partition':<24}{'offset':>12}{'lag':>10}{'records':>14}{'bad':>8}  sum")
    for part in report["partitions"]:
        print(
            f"{part['partition']:<24}{part['offset']:>12,}{part['lag']:>10,}"
            f"{part['records']:>14,}{part['bad_records']:>8,}  {part['sum']}"
        )
    print(
        f"{'total':<24}{report['offset']:>12,}{report['lag']:>10,}{report['records']:>14,}"
        f"{report['bad_records']:>8,}  {report['sum']}"
    )
    sys.stdout.flush()
    return 0


async def kafka_reset(settings: Settings, log: Logger) -> int:
    """Delete the group's committed offsets; refuse while it has members."""
    group = settings.kafka_group
    async with admin_client(settings) as admin:
        coordinator = await connect(
            lambda: admin.find_coordinator(group), settings, "find the Kafka group coordinator"
        )
        # aiokafka's admin client has no delete_consumer_groups: send DeleteGroups directly.
        response = await connect(
            lambda: admin._send_request(DeleteGroupsRequest([group]), coordinator),
            settings,
            "delete the group",
        )
    (_name, error_code), *_ = response.results
    if error_code == _NON_EMPTY_GROUP:
        raise WorkerError(f"consumer group {group!r} has members; stop its workers before reset")
    if error_code not in (0, _GROUP_ID_NOT_FOUND):
        raise WorkerError(f"cannot delete consumer group {group!r}: Kafka error {error_code}")
    log.info("reset", group=group, existed=error_code == 0)
    return 0
