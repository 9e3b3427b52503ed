"""`publish`: the lines of the input's files to the topic, exactly once even when killed.

Rule 1: a message holds up to `lines_per_message` whole lines of one file (and at most
        `MAX_MESSAGE_BYTES`); message `n` of a file always goes to the same partition.
Rule 2: messages are sent in transactions; each transaction also commits, as an offset of the
        progress group `<topic>` + `PROGRESS_SUFFIX`, every file's byte position after its
        messages. A publish killed at any instant leaves an open transaction that the next
        publish (same transactional id) aborts before it reads the position: each line lands in
        the topic once, and readers with `read_committed` never see an aborted copy.
Rule 3: a line longer than `max_line_bytes` is cut to `max_line_bytes + 1` bytes: still a bad
        record by the input rules, and a message stays bounded.
Rule 4: a missing topic is asked for as a producer's first send asks for it: a broker with
        `auto.create.topics.enable` creates it (its default partition count), so a publish
        started before the workers, or after, finds the same topic; any other broker's answer
        is the one-line error.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from service.errors import InputUnreadable, UsageError
from service.settings import Settings
from service.sources.files.source import input_patterns
from service.sources.kafka.client import (
    KafkaUnavailable,
    admin_client,
    client_options,
    connect,
    describe_error,
    partitions_of,
)
from service.telemetry.logs import Logger

__all__ = ["DEFAULT_LINES_PER_MESSAGE", "PROGRESS_SUFFIX", "publish"]

DEFAULT_LINES_PER_MESSAGE = 1000
MAX_MESSAGE_BYTES = 900_000  # under the broker's default message.max.bytes (1 MiB)
PROGRESS_SUFFIX = ".publish"
_MESSAGES_PER_TRANSACTION = 200
_TRANSACTION_TIMEOUT_MS = 10_000  # how long a killed publish can hold back read_committed readers


def _messages(
    handle: BinaryIO, lines_per_message: int, max_line_bytes: int
) -> Iterator[tuple[bytes, int]]:
    """(message value, byte offset after it) from the handle's position to the end."""
    lines: list[bytes] = []
    size = 0
    offset = handle.tell()
    while True:
        start = offset
        line = handle.readline(max_line_bytes + 2)
        if not line:
            break
        offset += len(line)
        if len(line) == max_line_bytes + 2 and not line.endswith(b"\n"):
            ended = False  # too long by now: drop the rest of it, keep a bad line's worth
            while rest := handle.readline(1 << 16):
                offset += len(rest)
                if rest.endswith(b"\n"):
                    ended = True
                    break
            line = line[: max_line_bytes + 1] + (b"\n" if ended else b"")
        if lines and (len(lines) == lines_per_message or size + len(line) > MAX_MESSAGE_BYTES):
            yield b"".join(lines), start
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        yield b"".join(lines), offset


def _progress_of(metadata: str | None) -> dict[str, list[int]]:
    """Each published file's [byte position, messages sent] from the progress commit."""
    if not metadata:
        return {}
    try:
        files = json.loads(metadata)["files"]
    except (ValueError, KeyError, TypeError):
        raise KafkaUnavailable(
            f"the publish progress commit is not ours: {metadata[:80]!r}"
        ) from None
    return {str(path): [int(pos), int(count)] for path, (pos, count) in files.items()}


def _input_files(settings: Settings) -> list[Path]:
    """The files of the input setting: the plain path (which must exist), or every match."""
    patterns = input_patterns(settings)
    plain = patterns.plain_path
    if plain is not None:
        if not plain.is_file():
            raise InputUnreadable(f"cannot read input {plain}: not an existing regular file")
        return [plain]
    files = sorted(Path(match.path) for match in patterns.scan().values())
    if not files:
        raise InputUnreadable(f"no file matches the input {patterns.describe()}")
    return files


async def publish(settings: Settings, lines_per_message: int, log: Logger) -> int:
    """Publish the input's files to `kafka_topic`, resuming where a previous publish stopped."""
    if lines_per_message < 1:
        raise UsageError(f"--lines-per-message must be >= 1, got {lines_per_message}")
    topic = settings.kafka_topic
    group = topic + PROGRESS_SUFFIX
    marker = TopicPartition(topic, 0)
    files = _input_files(settings)
    async with admin_client(settings) as admin:
        producer = AIOKafkaProducer(
            **client_options(settings),
            transactional_id=f"checkpoint-worker-publish:{topic}",
            enable_idempotence=True,
            acks="all",
            transaction_timeout_ms=_TRANSACTION_TIMEOUT_MS,
            max_request_size=MAX_MESSAGE_BYTES + 100_000,
        )
        # Starting fences any earlier publish of this topic and aborts its open transaction,
        # so the position read next is final.
        await connect(producer.start, settings, "start a transactional producer on Kafka")
        try:
            partitions = await partitions_of(admin, settings)
            committed = await connect(
                lambda: admin.list_consumer_group_offsets(group, partitions=[marker]),
                settings,
                "read the publish progress from Kafka",
            )
            found = committed.get(marker)
            progress = _progress_of(found.metadata if found and found.offset >= 0 else None)
            for path in files:
                try:
                    handle = path.open("rb")
                except OSError as error:
                    raise InputUnreadable(f"cannot read input {path}: {error.strerror}") from None
                with handle:
                    await _send_file(
                        producer,
                        handle,
                        path,
                        partitions,
                        progress,
                        settings,
                        lines_per_message,
                        log,
                    )
            return 0
        except KafkaError as error:
            raise KafkaUnavailable(
                f"publishing to Kafka topic {topic!r} failed: {describe_error(error)}"
            ) from None
        finally:
            await producer.stop()


async def _send_file(
    producer: AIOKafkaProducer,
    handle: BinaryIO,
    path: Path,
    partitions: list[int],
    progress: dict[str, list[int]],
    settings: Settings,
    lines_per_message: int,
    log: Logger,
) -> None:
    topic = settings.kafka_topic
    key = str(path)
    position, count = progress.get(key, [0, 0])
    resumed_at = position
    handle.seek(position)
    first = zlib.crc32(key.encode())
    batch: list[tuple[bytes, int]] = []
    sent = 0

    async def flush() -> None:
        nonlocal position, count, sent
        async with producer.transaction():
            for value, _after in batch:
                partition = partitions[(first + count) % len(partitions)]
                await producer.send(topic, value, partition=partition)
                count += 1
            position = batch[-1][1]
            progress[key] = [position, count]
            metadata = json.dumps({"files": progress}, separators=(",", ":"))
            await producer.send_offsets_to_transaction(
                {TopicPartition(topic, 0): OffsetAndMetadata(count, metadata)},
                topic + PROGRESS_SUFFIX,
            )
        sent += len(batch)
        batch.clear()

    for message in _messages(handle, lines_per_message, settings.max_line_bytes):
        batch.append(message)
        if len(batch) == _MESSAGES_PER_TRANSACTION:
            await flush()
    if batch:
        await flush()
    log.info(
        "published",
        input=key,
        topic=topic,
        messages=sent,
        resumed_at=resumed_at,
        offset=position,
        messages_total=count,
    )
