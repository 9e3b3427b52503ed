"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import Broker, BrokerUnavailable, start_broker
from tests.processes import kill_leftovers


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    yield
    kill_leftovers()


@pytest.fixture
def anyio_backend() -> str:
    """aiofiles runs only on asyncio, so the async tests do too."""
    return "asyncio"


@pytest.fixture
def no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read WORKER_* variables: hide the caller's from tests that set their own."""
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def default_int_limit() -> Iterator[None]:
    """Python's default cap on int/str conversions of long digit strings, as a library user has
    it: the command line lifts it, and a test in the same process must not depend on that."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    yield
    sys.set_int_max_str_digits(before)


@pytest.fixture(scope="session")
def kafka() -> Iterator[Broker]:
    """A real Kafka broker for the session: the one named by KAFKA_BOOTSTRAP_SERVERS (and
    KAFKA_SASL_BOOTSTRAP_SERVERS), or one started here. Without one the Kafka tests skip, unless
    REQUIRE_KAFKA=1 (`make test`, `make kafka-test`, CI) makes that a failure."""
    named = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if named:
        sasl = os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS", "")
        yield Broker(plaintext=named, sasl=sasl, directory=Path(), process=None)
        return
    try:
        broker = start_broker()
    except BrokerUnavailable as error:
        if os.environ.get("REQUIRE_KAFKA") == "1":
            pytest.fail(f"REQUIRE_KAFKA=1 but no Kafka broker: {error}")
        pytest.skip(f"no Kafka broker: {error}")
    yield broker
    broker.stop()
