"""One member of the consumer group: the partitions it owns, their states, and their commits.

Rule 1: a partition's state exists only while this member owns it. On assignment it is loaded
        from the group's last commit and the consumer seeks to its offset; on revocation it is
        committed and dropped. Nothing is kept in memory across a rebalance.
Rule 2: a commit carries each changed partition's whole state (`state.py`) in one offset commit.
        Commits happen on the timer, in `on_partitions_revoked` and at shutdown (before the
        consumer stops, which does not call the listener). The broker checks the group
        generation: a member that lost its partitions (stalled, partitioned off) has its commit
        rejected, and then drops its states; the new owner resumes from the last accepted commit.
Rule 3: a message is applied only at or after its partition's state offset, and a fetch that
        straddled a rebalance is dropped and read again from the owned states' offsets.
Rule 4: a partition that cannot be resumed exactly (no state but a log that no longer starts at
        0, a committed offset below the log's start, a state that is not ours, a state too large
        for the broker's metadata limit) is a fatal error naming it, never a silent restart. The
        listener finds it; `read` raises it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    OffsetMetadataTooLargeError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import OffsetAndMetadata

from service.core.parsing import DetailBudget
from service.core.position import Position
from service.errors import BadRecordFound, UnexpectedError, WorkerError
from service.lifecycle.partition import Gauge
from service.settings import Settings
from service.sources.kafka.client import (
    KafkaUnavailable,
    admin_options,
    client_options,
    connect,
    describe_error,
    group_generation,
    partitions_of,
    quiet_abandoned_requests,
)
from service.sources.kafka.commit_state import (
    StateUnreadable,
    apply_clean_messages,
    apply_message,
    decode,
    encode,
)
from service.sources.kafka.outage import BrokerWatch
from service.storage.checkpoint import total_of
from service.telemetry.logs import Logger

__all__ = ["MAX_RECORDS", "GroupMember", "PartitionUnusable", "name_of"]

_FETCH_TIMEOUT_MS = 200
MAX_RECORDS = 500  # messages taken from one fetch, reading flat out


class PartitionUnusable(WorkerError):
    """A partition whose committed state cannot be resumed exactly."""


_METADATA_MAX_AGE_MS = 10_000


def name_of(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def _names(tps: Iterable[TopicPartition]) -> list[str]:
    return [name_of(tp) for tp in sorted(tps)]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._member.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._member.assigned(assigned)


class GroupMember:
    """Reads the partitions the group gives this process and commits their states."""

    def __init__(self, settings: Settings, log: Logger, watch: BrokerWatch) -> None:
        self._settings = settings
        self._log = log
        self._watch = watch
        options = client_options(settings)
        session_ms = int(settings.kafka_session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            **options,
            group_id=settings.kafka_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # only until `assigned` seeks to the committed state
            isolation_level="read_committed",  # never an aborted publish's copy
            session_timeout_ms=session_ms,
            # A tenth of the session: a survivor hears of a rebalance (a member gone) sooner.
            heartbeat_interval_ms=max(100, session_ms // 10),
            rebalance_timeout_ms=max(session_ms, 10_000),
            # A caught-up member's fetch waits this long at the broker, and a partition the
            # group gives it is fetched only after: short, so a hand-over reads at once.
            fetch_max_wait_ms=100,
            # How soon partitions added to the topic are seen and assigned (the client's
            # default: 5 minutes).
            metadata_max_age_ms=_METADATA_MAX_AGE_MS,
        )
        self.admin = AIOKafkaAdminClient(**admin_options(settings))
        self.owned: dict[TopicPartition, Position] = {}
        # The states given up uncommitted at the stop: no longer this member's to commit, still
        # what it read, for its last `progress` and `worker_stopped` lines (`read_states`).
        self._given_up: dict[TopicPartition, Position] = {}
        self._committed: dict[TopicPartition, Position] = {}
        self._epoch = 0  # bumped by every change of ownership (Rule 3)
        self._fatal: WorkerError | None = None
        self._details = DetailBudget()  # bad records shown in detail, this run
        self._turn = 0  # whose turn it is to be read first, paced (`_fetch`)
        self._fresh: set[TopicPartition] = set()  # gained anew, not read yet: read first
        self._last_revoked: set[TopicPartition] = set()

    async def start(self) -> list[int]:
        """Connect, and join the group (the first assignment comes while reading); the topic's
        partition numbers, as found before joining (a missing topic is one error line then)."""
        quiet_abandoned_requests()
        watch = self._watch
        await connect(self.admin.start, self._settings, "connect to Kafka", watch)
        watch.probe_with(self.admin)
        numbers = await partitions_of(self.admin, self._settings, watch)
        self.consumer.subscribe([self._settings.kafka_topic], listener=_Listener(self))
        await connect(self._join, self._settings, "join the Kafka consumer group", watch)
        return numbers

    async def _join(self) -> None:
        try:
            await self.consumer.start()
        except UnknownTopicOrPartitionError:
            # The topic was deleted since `start` found it. Retriable to aiokafka, and the
            # brokers answer meanwhile, so no outage bound would end the wait: one error line.
            await partitions_of(self.admin, self._settings)
            raise

    async def close(self) -> None:
        """Leave the group (after the final commit) and disconnect."""
        try:
            await self.consumer.stop()
        finally:
            await self.admin.close()

    # -- the rebalance listener --------------------------------------------------------------

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        self._epoch += 1
        try:
            await self.commit("revoked", only=revoked)
        except WorkerError as error:
            self._fatal = self._fatal or error
        for tp in revoked:
            self.owned.pop(tp, None)
            self._committed.pop(tp, None)
        self._last_revoked = set(revoked)
        if revoked:
            self._log.info("partitions_revoked", partitions=_names(revoked))

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        self._epoch += 1
        self.consumer.pause(*assigned)  # nothing is fetched before the seek to its state
        try:
            states = await self._load(assigned)
        except WorkerError as error:
            self._fatal = self._fatal or error
            return
        except KafkaError as error:
            self._fatal = self._fatal or KafkaUnavailable(
                f"cannot load the committed state of {', '.join(_names(assigned))}: "
                f"{describe_error(error)}"
            )
            return
        except Exception as error:
            self._fatal = self._fatal or UnexpectedError(error)
            return
        for tp, position in states.items():
            self.owned[tp] = position
            self._committed[tp] = position
            self.consumer.seek(tp, position.offset)
        self.consumer.resume(*states)
        # A rebalance gives a member back what it had too: a partition new to it (a dead
        # member's) is read first, its records the longest unread.
        self._fresh = set(states) - self._last_revoked
        self._log.info(
            "partitions_assigned",
            partitions=_names(assigned),
            offsets={name_of(tp): p.offset for tp, p in sorted(states.items())},
        )

    async def _load(self, assigned: set[TopicPartition]) -> dict[TopicPartition, Position]:
        if not assigned:
            return {}
        group, tps = self._settings.kafka_group, list(assigned)
        committed = await self._watch.reach(
            lambda: self.admin.list_consumer_group_offsets(group, partitions=tps),
            "load the committed states",
        )
        starts = await self._watch.reach(
            lambda: self.consumer.beginning_offsets(tps), "read the log start offsets"
        )
        states = {}
        for tp in sorted(assigned):
            entry, start = committed.get(tp), starts[tp]
            if entry is None or entry.offset < 0:
                if start > 0:
                    raise PartitionUnusable(
                        f"Kafka partition {name_of(tp)} has no committed state but its log starts "
                        f"at offset {start}, not 0: its first records are gone (retention or a "
                        "reset); refusing to count it from the middle"
                    )
                states[tp] = Position()
                continue
            if entry.offset < start:
                raise PartitionUnusable(
                    f"Kafka partition {name_of(tp)} is committed at offset {entry.offset}, below "
                    f"its log start {start}: records after the commit are gone"
                )
            try:
                states[tp] = decode(entry.offset, entry.metadata)
            except StateUnreadable as error:
                raise PartitionUnusable(
                    f"the committed state of Kafka partition {name_of(tp)} cannot be used: {error}"
                ) from None
        return states

    # -- reading -----------------------------------------------------------------------------

    def changed(self) -> bool:
        """Does any owned partition's state differ from its last commit?"""
        return any(self._committed.get(tp) != p for tp, p in self.owned.items())

    def unsaved_records(self) -> int:
        """Records read from the owned partitions past their last commits."""
        return sum(
            max(0, p.records - self._committed.get(tp, p).records) for tp, p in self.owned.items()
        )

    def gauges(self) -> list[Gauge]:
        """Each owned partition: its position, its log end offset (the last fetch's high
        watermark) and its lag, the messages past the group's last commit."""
        assigned = self.consumer.assignment()
        found = []
        for tp, position in sorted(self.owned.items()):
            if tp not in assigned:  # mid-rebalance: the listener drops it next
                continue
            end = self._log_end(tp, position)
            committed = self._committed.get(tp, position).offset
            found.append(Gauge(name_of(tp), position, end, end - committed, "messages"))
        return found

    def read_states(self) -> dict[TopicPartition, Position]:
        """What this member read of each partition it owns, or owned until it gave them up."""
        return {**self._given_up, **self.owned}

    def log_ends(self) -> int:
        """The messages of the partitions read up to their log end offsets (as of their last
        fetch): what `progress` gives the percent of."""
        return sum(self._log_end(tp, position) for tp, position in self.read_states().items())

    def _log_end(self, tp: TopicPartition, position: Position) -> int:
        return max(position.offset, self.consumer.highwater(tp) or 0)

    def raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    async def read(self, max_messages: int) -> Position:
        """Fetch once and apply what came; what that read (for pacing and the counters), which
        never includes the totals a partition brought when it was assigned."""
        epoch = self._epoch
        try:
            batches = await self._fetch(max_messages)
        except OffsetOutOfRangeError as error:
            names = ", ".join(_names(error.args[0])) if error.args else "a partition"
            raise PartitionUnusable(
                f"Kafka partition {names} has no records at its committed offset "
                "(deleted by retention, or the topic was recreated)"
            ) from None
        except KafkaError as error:
            raise KafkaUnavailable(f"cannot read from Kafka: {describe_error(error)}") from None
        self.raise_fatal()
        if epoch != self._epoch:
            for tp, position in self.owned.items():  # a fetch that straddled a rebalance
                self.consumer.seek(tp, position.offset)
            return Position()
        read = []
        for tp, messages in batches.items():
            before = self.owned.get(tp)
            if before is not None:
                self.owned[tp] = self._apply(tp, before, messages)
                read.append(self.owned[tp].since(before))
        # Past what getmany returned (transaction markers, aborted publishes) nothing is left to
        # count: the state's offset follows the consumer's position.
        positions = {}
        for tp in list(self.owned):
            try:
                positions[tp] = await self.consumer.position(tp)
            except IllegalStateError:  # revoked in the meantime
                continue
        if epoch == self._epoch:
            for tp, offset in positions.items():
                state = self.owned.get(tp)
                if state is not None and offset > state.offset:
                    self.owned[tp] = Position(
                        offset, state.lines, state.records, state.bad_records, state.sum
                    )
                    read.append(Position(offset - state.offset))
        return total_of(read)

    async def _fetch(self, max_messages: int) -> dict[TopicPartition, list[Any]]:
        """Messages from the fetched buffers. A few at a time (paced), take turns among the
        owned partitions first: aiokafka hands out one partition's buffer before the next's,
        which would starve a partition that just arrived. The partitions a rebalance gave this
        member anew are read as soon as their first fetches are in, before any turn, and
        together: the pace's delay comes after all of them, not between them (a message can
        hold a second of the pace)."""
        getmany = self.consumer.getmany
        batches: dict[TopicPartition, list[Any]]
        if max_messages < MAX_RECORDS and self.owned:
            batches = {}
            for tp in sorted(self._fresh & set(self.owned)):
                first = await getmany(tp, timeout_ms=0, max_records=max_messages)
                if first:
                    self._fresh.discard(tp)
                    batches.update(first)
            if batches:
                return batches
            # The awaits above let a rebalance run: it may have taken every partition.
            turns = sorted(self.owned)
            if turns:
                turn = turns[self._turn % len(turns)]
                self._turn += 1
                batches = await getmany(turn, timeout_ms=0, max_records=max_messages)
                if batches:
                    return batches
        batches = await getmany(timeout_ms=_FETCH_TIMEOUT_MS, max_records=max_messages)
        return batches

    def _apply(self, tp: TopicPartition, position: Position, messages: list[Any]) -> Position:
        settings = self._settings
        fresh = [message for message in messages if message.offset >= position.offset]
        if not fresh:
            return position
        # One parse for the whole batch: most batches hold no bad record.
        values = [message.value for message in fresh]
        clean = apply_clean_messages(position, fresh[-1].offset, values, settings.max_line_bytes)
        if clean is not None:
            return clean
        for message in fresh:
            applied = apply_message(
                position,
                message.offset,
                message.value,
                settings.max_line_bytes,
                stop_at_bad=settings.on_bad_record == "fail",
                bad_details=self._details.left,
            )
            for bad in self._details.take(applied.bad):
                self._log.warning(
                    "bad_record",
                    partition=name_of(tp),
                    offset=message.offset,
                    line=bad.line,
                    reason=bad.reason,
                )
            if applied.failed is not None:
                self.owned[tp] = position
                raise BadRecordFound(
                    f"bad record in Kafka partition {name_of(tp)} at offset {message.offset}, "
                    f"line {applied.failed.line} of the message: {applied.failed.reason}"
                )
            position = applied.position
        return position

    # -- committing --------------------------------------------------------------------------

    async def commit(
        self, reason: str, only: Iterable[TopicPartition] | None = None, *, force: bool = False
    ) -> bool:
        """Commit every owned partition whose state changed since its last commit (`force`:
        every owned partition, so a final commit always shows); True if one was committed."""
        wanted = set(self.owned if only is None else only)
        changed = {
            tp: position
            for tp, position in self.owned.items()
            if tp in wanted and (force or self._committed.get(tp) != position)
        }
        if not changed:
            return False
        offsets = {tp: OffsetAndMetadata(p.offset, encode(p)) for tp, p in changed.items()}
        # A member the group dropped has no generation (aiokafka resets it to -1), and a commit
        # without one is accepted once the group is empty: an old state would overwrite newer
        # ones. Such a member's partitions are lost, like Java's onPartitionsLost.
        if group_generation(self.consumer) < 0:
            self._drop(changed, reason, "this member left the group (session expired)")
            return False
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError:
            self._drop(changed, reason, "the group moved these partitions (generation fenced)")
            return False
        except OffsetMetadataTooLargeError:
            raise await self._too_large(offsets) from None
        except KafkaError as error:
            raise KafkaUnavailable(
                f"cannot commit {', '.join(_names(changed))}: {describe_error(error)}"
            ) from None
        self._committed.update(changed)
        self._log.info(
            "checkpoint_saved",
            reason=reason,
            partitions={name_of(tp): p.offset for tp, p in sorted(changed.items())},
            records=sum(p.records for p in changed.values()),
            bad_records=sum(p.bad_records for p in changed.values()),
            sum=str(sum(p.sum for p in changed.values())),
        )
        return True

    def give_up(self, reason: str, cause: str) -> None:
        """Drop every owned state uncommitted: its next owner resumes from the last accepted
        commit, which is exact (Rule 3)."""
        self._given_up.update(self.owned)
        self._drop(list(self.owned), reason, cause)

    def _drop(self, changed: Iterable[TopicPartition], reason: str, cause: str) -> None:
        """Fenced (Rule 2): these states are no longer ours to save."""
        self._epoch += 1
        names = _names(changed)
        for tp in list(changed):
            self.owned.pop(tp, None)
            self._committed.pop(tp, None)
        self._log.warning("commit_rejected", partitions=names, reason=reason, cause=cause)

    async def _too_large(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> WorkerError:
        """Find which partition's state the broker refused, one commit at a time."""
        for tp, entry in sorted(offsets.items()):
            try:
                await self.consumer.commit({tp: entry})
            except OffsetMetadataTooLargeError:
                return PartitionUnusable(
                    f"the state of Kafka partition {name_of(tp)} ({len(entry.metadata)} bytes) "
                    "is larger than the broker's offset.metadata.max.bytes; it cannot be committed"
                )
            except KafkaError:
                continue
        return PartitionUnusable("the broker refused a partition state as too large")
