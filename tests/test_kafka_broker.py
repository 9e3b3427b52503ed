"""The test broker itself: a real Kafka that answers on its PLAINTEXT and SCRAM listeners."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.kafka_broker import SASL_PASSWORD, SASL_USER, Broker

pytestmark = [pytest.mark.kafka, pytest.mark.anyio]


@pytest.mark.parametrize("secured", [False, True])
async def test_broker_answers_on_each_listener(kafka: Broker, secured: bool) -> None:
    """Both client listeners serve metadata; the SASL one after a SCRAM-SHA-256 login."""
    options = (
        {
            "bootstrap_servers": kafka.sasl,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_plain_username": SASL_USER,
            "sasl_plain_password": SASL_PASSWORD,
        }
        if secured
        else {"bootstrap_servers": kafka.plaintext}
    )
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        assert isinstance(await admin.list_topics(), list)
    finally:
        await admin.close()
