"""The group's committed states as a whole, read with an admin client: for `status`, for the end
of a run that is not following, and for `result.json`.

Rule 1: only committed states count: the group's totals are the sums of every partition's last
        accepted commit, whoever made it.
Rule 2: a run that is not following is done when every partition's committed offset has reached
        the end offset the run saw when it started.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service.core.position import Position
from service.sources.kafka.commit_state import StateUnreadable, decode
from service.storage.checkpoint import total_of

__all__ = ["GroupState", "read_group_state"]


@dataclass(frozen=True)
class GroupState:
    """Every partition's committed state (a fresh `Position` where none is committed)."""

    partitions: dict[TopicPartition, Position]
    unreadable: dict[TopicPartition, str]

    def reached(self, ends: dict[TopicPartition, int]) -> bool:
        return all(self.partitions[tp].offset >= end for tp, end in ends.items())

    def totals(self) -> Position:
        return total_of(list(self.partitions.values()))


async def read_group_state(
    admin: AIOKafkaAdminClient, group: str, partitions: list[TopicPartition]
) -> GroupState:
    committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
    states: dict[TopicPartition, Position] = {}
    unreadable: dict[TopicPartition, str] = {}
    for tp in partitions:
        entry = committed.get(tp)
        states[tp] = Position()
        if entry is not None and entry.offset >= 0:
            try:
                states[tp] = decode(entry.offset, entry.metadata)
            except StateUnreadable as error:
                unreadable[tp] = str(error)
    return GroupState(states, unreadable)
