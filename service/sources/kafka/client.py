"""Connecting to Kafka: client options from the settings, and broker failures as one line.

Rule 1: every client (consumer, producer, admin) is built from the same `client_options`, so the
        security settings mean the same thing everywhere.
Rule 2: reaching the brokers is bounded by `CONNECT_TIMEOUT` (a running worker's, by its
        outage bound: `outage.py`); an unreachable broker, a refused login or a missing topic is
        a `KafkaUnavailable` (exit 1), one line naming what failed.
Rule 3: what aiokafka keeps private is read here alone (`group_generation`), for the aiokafka
        versions pyproject.toml admits, and a test against a real broker holds it there.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, LeaderNotAvailableError

from service.errors import UsageError, WorkerError
from service.settings import Settings

if TYPE_CHECKING:
    from service.sources.kafka.outage import BrokerWatch

__all__ = [
    "ANSWER_TIMEOUT",
    "AUTO_CREATE_WAIT",
    "CONNECT_TIMEOUT",
    "KafkaUnavailable",
    "TopicMissing",
    "admin_client",
    "admin_options",
    "client_options",
    "describe_error",
    "diagnosed",
    "group_generation",
    "partitions_of",
    "quiet_abandoned_requests",
    "reason_of",
]

CONNECT_TIMEOUT = 15.0
_REQUEST_TIMEOUT_MS = 10_000
# A broker that takes longer to answer a metadata request is away (a frozen broker accepts
# connections and answers nothing): the admin client's requests, the outage probe, the check
# for a refused login.
ANSWER_TIMEOUT = 3.0
AUTO_CREATE_WAIT = 10.0  # seconds for a broker that creates topics on first use to do it
_AUTO_CREATE = "auto.create.topics.enable"
T = TypeVar("T")


class KafkaUnavailable(WorkerError):
    """The brokers cannot be reached or refuse this client."""


class TopicMissing(KafkaUnavailable):
    """`kafka_topic` does not exist on the brokers."""


def admin_options(settings: Settings) -> dict[str, Any]:
    """An admin client's options: its requests (metadata, offsets) are answered at once or
    the broker is away, and a silent one is told as such in seconds, not tens."""
    return {**client_options(settings), "request_timeout_ms": int(ANSWER_TIMEOUT * 1000)}


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client of this worker."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "security_protocol": protocol,
        "request_timeout_ms": _REQUEST_TIMEOUT_MS,
        "connections_max_idle_ms": 60_000,
    }
    if protocol.startswith("SASL_"):
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise UsageError(
                f"kafka_security_protocol {protocol} needs kafka_sasl_username and "
                "kafka_sasl_password (--kafka-sasl-username, WORKER_KAFKA_SASL_USERNAME, ...)"
            )
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    if protocol.endswith("SSL"):
        try:
            options["ssl_context"] = ssl.create_default_context(
                cafile=settings.kafka_ssl_cafile or None
            )
        except (OSError, ssl.SSLError) as error:
            raise UsageError(
                f"cannot use kafka_ssl_cafile {settings.kafka_ssl_cafile!r}: {error}"
            ) from None
    # aiokafka logs each retry and each expected fencing at error level; the worker reports
    # what matters as its own events, so only its critical lines go through.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return options


async def refusal(settings: Settings) -> KafkaError | None:
    """Why the first bootstrap server refuses this client for good (a failed login), or None
    when it does not answer: aiokafka reports both as 'Unable to bootstrap'."""
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    options = client_options(settings)
    # A login takes a TLS handshake and SASL round trips: as long as any request may take.
    plain = options["security_protocol"] == "PLAINTEXT"
    timeout = ANSWER_TIMEOUT if plain else _REQUEST_TIMEOUT_MS / 1000
    try:
        with anyio.fail_after(timeout):
            connection = await create_conn(
                host,
                int(port),
                request_timeout_ms=int(timeout * 1000),
                security_protocol=options["security_protocol"],
                ssl_context=options.get("ssl_context"),
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            )
    except KafkaError as error:
        return None if error.retriable else error
    except (OSError, TimeoutError):
        return None
    connection.close()
    return None


async def diagnosed(error: KafkaError, settings: Settings) -> KafkaError:
    """The failure to act on: a failure to connect may be a refusal for good (a wrong
    password), which the brokers tell when asked once more."""
    if isinstance(error, KafkaConnectionError):
        return await refusal(settings) or error
    return error


def quiet_abandoned_requests() -> None:
    """A request given up on (a timer commit the brokers did not answer in time) goes on inside
    aiokafka, shielded, and may end in a KafkaError nobody awaits: the worker reported the
    failure already, so asyncio's "exception was never retrieved" line is dropped for those."""
    loop = asyncio.get_running_loop()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), KafkaError):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def describe_error(error: BaseException) -> str:
    """A broker failure in a few words (aiokafka's messages are often empty)."""
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text and text != name else name


def reason_of(error: KafkaError) -> str:
    """Why a call failed, for a person: a failed connection says so without aiokafka's list of
    socket addresses."""
    if isinstance(error, KafkaConnectionError):
        return "no connection to a broker"
    return describe_error(error)


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; KafkaUnavailable when the brokers cannot be reached in time."""
    admin = AIOKafkaAdminClient(**admin_options(settings))
    await connect(admin.start, settings, "connect to Kafka")
    try:
        yield admin
    finally:
        await admin.close()


async def connect(
    call: Callable[[], Awaitable[T]],
    settings: Settings,
    what: str,
    watch: BrokerWatch | None = None,
) -> T:
    """`call()` (a client's start or a request), retried while Kafka answers with a retriable
    error (a coordinator still loading), all within CONNECT_TIMEOUT; with a worker's `watch`,
    for as long as its outage bound allows."""
    if watch is not None:
        return await watch.reach(call, what)
    servers = settings.kafka_bootstrap_servers
    last: KafkaError | None = None
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            while True:
                try:
                    return await call()
                except KafkaError as failure:
                    error = await diagnosed(failure, settings)
                    if not error.retriable:
                        raise error from None
                    last = error
                    await anyio.sleep(0.2)
    except TimeoutError:
        detail = f" (last: {reason_of(last)})" if last else ""
        raise KafkaUnavailable(
            f"cannot {what} at {servers}: no answer within {CONNECT_TIMEOUT:.0f} s{detail}"
        ) from None
    except KafkaError as error:
        raise KafkaUnavailable(f"cannot {what} at {servers}: {describe_error(error)}") from None


async def partitions_of(
    admin: AIOKafkaAdminClient, settings: Settings, watch: BrokerWatch | None = None
) -> list[int]:
    """The partition numbers of `kafka_topic`; TopicMissing if the topic does not exist.

    Asking for a topic is a first use: a broker with `auto.create.topics.enable` creates it then,
    and is waited for (its first answer still says the topic is unknown). A broker without it is
    not: the topic is missing at once, where a consumer would ask again for tens of seconds.
    """
    found = await _partitions_described(admin, settings, watch)
    if found:
        return found
    missing = f"Kafka topic {settings.kafka_topic!r} does not exist at "
    missing += settings.kafka_bootstrap_servers
    creates = await _creates_topics_on_first_use(admin)
    if creates is False:
        raise TopicMissing(
            f"{missing}, and the broker does not create topics on first use "
            "(auto.create.topics.enable=false): create it first"
        )
    with anyio.move_on_after(AUTO_CREATE_WAIT):
        while not found:
            await anyio.sleep(0.1)
            found = await _partitions_described(admin, settings, watch)
    if not found:
        why = "" if creates else " (auto.create.topics.enable=false there?)"
        raise TopicMissing(
            f"{missing}, and the broker did not create it on first use within "
            f"{AUTO_CREATE_WAIT:.0f} s{why}: create it first"
        )
    return found


async def _partitions_described(
    admin: AIOKafkaAdminClient, settings: Settings, watch: BrokerWatch | None
) -> list[int]:
    """The topic's partition numbers as the brokers describe it now; none while it is unknown."""
    topic = settings.kafka_topic

    async def describe() -> list[int]:
        for entry in await admin.describe_topics([topic]):
            if entry["topic"] != topic:
                continue
            if entry["error_code"] == LeaderNotAvailableError.errno or (
                entry["error_code"] == 0 and not entry["partitions"]
            ):
                raise LeaderNotAvailableError()  # retriable: `connect` asks again
            if entry["error_code"] == 0:
                return sorted(part["partition"] for part in entry["partitions"])
        return []

    return await connect(describe, settings, "describe the Kafka topic", watch)


async def _creates_topics_on_first_use(admin: AIOKafkaAdminClient) -> bool | None:
    """The broker's `auto.create.topics.enable`; None when it will not say (no right to
    describe its configuration, or no answer)."""
    try:
        with anyio.fail_after(ANSWER_TIMEOUT):
            brokers = (await admin.describe_cluster())["brokers"]
            if not brokers:
                return None
            node = str(min(broker["node_id"] for broker in brokers))
            resource = ConfigResource(ConfigResourceType.BROKER, node, {_AUTO_CREATE: None})
            (response,) = await admin.describe_configs([resource])
    except (KafkaError, TimeoutError, ValueError, KeyError):
        return None
    for entry in response.to_object()["resources"]:
        if entry["error_code"] != 0:
            return None
        for config in entry["config_entries"]:
            if config["config_names"] == _AUTO_CREATE:
                return str(config["config_value"]).lower() == "true"
    return None


def group_generation(consumer: Any) -> int:
    """The group generation a consumer holds: -1 once the group has dropped it.

    aiokafka keeps it on its private coordinator only (`consumer._coordinator.generation`); a
    version without it is an error that says so, never a silent guess.
    """
    generation = getattr(getattr(consumer, "_coordinator", None), "generation", None)
    if not isinstance(generation, int):
        raise WorkerError("this aiokafka does not expose the consumer group's generation")
    return generation
