"""Broker outages: how long Kafka has not answered, and what the worker does meanwhile.

Rule 1: an outage is timed in event-loop time (`OutageClock`, pure): the clock adds each gap
        between two ticks, and a gap over MAX_TICK_GAP (the process was stopped, the machine
        suspended) adds nothing, so a worker frozen for a minute is not ended for it.
Rule 2: the first failure to reach the brokers starts an outage: one `broker_unavailable`
        warning, the worker is not ready meanwhile; the first success ends it with one
        `broker_available`. Start-up calls are retried with backoff (`BrokerWatch.reach`); while
        running, a metadata request every PROBE_INTERVAL tells whether the brokers answer.
Rule 3: an outage longer than `kafka_unavailable_timeout` (0: never) ends the run with one
        error line (KafkaUnavailable, exit 1).
Rule 4: a probe the brokers answer with an error is asked once more by a login of its own: a
        refusal for good (the password changed under a running worker) is no outage to wait
        out but one error line at once, as at start-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from service.settings import Settings
from service.sources.kafka.client import (
    ANSWER_TIMEOUT,
    KafkaUnavailable,
    describe_error,
    diagnosed,
    reason_of,
    refusal,
)
from service.telemetry.logs import Logger

__all__ = ["MAX_TICK_GAP", "BrokerWatch", "OutageClock"]

MAX_TICK_GAP = 1.0  # a longer gap between ticks: the process did not run, and it does not count
TICK = 0.25
PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = ANSWER_TIMEOUT  # a frozen broker accepts connections and answers nothing
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0
T = TypeVar("T")


class OutageClock:
    """Whether the brokers are away, and for how long, in event-loop time."""

    def __init__(self, bound: float) -> None:
        self.bound = bound  # seconds; 0: no bound
        self.away_for: float | None = None  # None: the brokers answer
        self._last_tick: float | None = None

    def tick(self, now: float) -> None:
        if self.away_for is not None and self._last_tick is not None:
            gap = now - self._last_tick
            if 0 < gap <= MAX_TICK_GAP:
                self.away_for += gap
        self._last_tick = now

    def failed(self) -> bool:
        """A call found no broker; True if that starts an outage."""
        if self.away_for is not None:
            return False
        self.away_for = 0.0
        return True

    def answered(self) -> float | None:
        """A call was answered; the outage it ends, in seconds, or None if there was none."""
        away, self.away_for = self.away_for, None
        return away

    def exceeded(self) -> bool:
        return self.bound > 0 and self.away_for is not None and self.away_for > self.bound


class BrokerWatch:
    """Keeps the outage clock of one worker: retries its start-up calls, probes while running."""

    def __init__(self, settings: Settings, log: Logger) -> None:
        self._settings = settings
        self._log = log
        self.clock = OutageClock(settings.kafka_unavailable_timeout)
        self._last_error = ""
        self._admin: AIOKafkaAdminClient | None = None  # probed once started
        self._refused: str | None = None  # why the brokers refuse this worker for good (Rule 4)
        self._on_change: Callable[[bool], None] = lambda _available: None

    @property
    def available(self) -> bool:
        return self.clock.away_for is None

    def probe_with(self, admin: AIOKafkaAdminClient) -> None:
        """From now on, probe the brokers through `admin` (started)."""
        self._admin = admin

    async def reach(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`call()`, retried with backoff while the brokers cannot be reached; an error the
        brokers answer with that retrying cannot cure (a refused login) is one line at once."""
        backoff = _BACKOFF_FIRST
        while True:
            try:
                result = await call()
            except KafkaError as failure:
                error = await diagnosed(failure, self._settings)
                if not error.retriable:
                    servers = self._settings.kafka_bootstrap_servers
                    raise KafkaUnavailable(
                        f"cannot {what} at {servers}: {describe_error(error)}"
                    ) from None
                self.failed(f"cannot {what}: {reason_of(error)}")
                await anyio.sleep(backoff)
                backoff = min(2 * backoff, _BACKOFF_MAX)
                continue
            self.answered()
            return result

    def failed(self, why: str) -> None:
        self._last_error = why
        if self.clock.failed():
            self._on_change(False)
            self._log.warning(
                "broker_unavailable",
                servers=self._settings.kafka_bootstrap_servers,
                message=why,
                timeout=self.clock.bound,
            )

    def answered(self) -> None:
        away = self.clock.answered()
        if away is not None:
            self._on_change(True)
            self._log.info("broker_available", unavailable_for=round(away, 1))

    async def run(self, on_change: Callable[[bool], None]) -> None:
        """Tick the clock and probe the brokers until cancelled; KafkaUnavailable past the bound.
        `on_change(available)` is told when an outage starts and ends."""
        self._on_change = on_change
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._probe)
            while not self.clock.exceeded() and self._refused is None:
                await anyio.sleep(TICK)
                self.clock.tick(anyio.current_time())
            tasks.cancel_scope.cancel()
        if self._refused is not None:
            raise KafkaUnavailable(self._refused)
        raise KafkaUnavailable(
            f"cannot reach Kafka at {self._settings.kafka_bootstrap_servers} for "
            f"{self.clock.bound:g} s (kafka_unavailable_timeout); last: {self._last_error}"
        )

    async def _probe(self) -> None:
        while True:
            await anyio.sleep(PROBE_INTERVAL)
            if self._admin is None:
                continue  # start-up: its own calls tell (`reach`)
            try:
                with anyio.fail_after(PROBE_TIMEOUT):
                    await self._admin.describe_cluster()
            except TimeoutError:
                self.failed(f"no answer within {PROBE_TIMEOUT:g} s")
            except KafkaError as error:
                refused = await refusal(self._settings)
                if refused is not None:
                    servers = self._settings.kafka_bootstrap_servers
                    self._refused = f"cannot reach Kafka at {servers}: {describe_error(refused)}"
                    return
                self.failed(reason_of(error))
            except Exception as error:  # aiokafka without metadata yet: no broker answers
                self.failed(describe_error(error))
            else:
                self.answered()
