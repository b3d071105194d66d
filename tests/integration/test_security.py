"""Least privilege (issue 6 §9): drip over a SCRAM-authenticated Kafka listener, as
managed Kafka services require, and as a PostgreSQL role that is not a superuser."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.adapters.clock import WallClock
from services.adapters.kafka_security import client_options
from services.bootstrap import build
from services.devtools import infra
from services.runtime import running
from services.settings import Settings
from tests.gallery import appointment_reminders


@pytest.fixture
def scram(endpoints: infra.Endpoints) -> tuple[str, str, str]:
    assert endpoints.kafka_scram, (
        "no SCRAM listener known: scripts/infra.sh starts one (DRIP_LOCAL_KAFKA_SCRAM_*)")
    return endpoints.kafka_scram


def scram_settings(settings: Settings, scram: tuple[str, str, str],
                   password: str | None = None) -> Settings:
    bootstrap, user, secret = scram
    return settings.model_copy(update={
        "kafka_bootstrap": bootstrap, "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_username": user,
        "kafka_sasl_password": Settings(kafka_sasl_password=password or secret)
        .kafka_sasl_password})


async def test_drip_runs_over_a_scram_listener(settings: Settings,
                                               scram: tuple[str, str, str]) -> None:
    secured = scram_settings(settings, scram)
    services = build(secured, WallClock())
    services.app.define_campaign(appointment_reminders())
    now = datetime.now(UTC)  # the confirmation falls due at once on the wall clock
    booking = {"specversion": "1.0", "id": "e1", "source": "crm",
               "type": "appointment.booked", "time": now.isoformat(), "subject": "p1",
               "clinicid": "vitoria",
               "data": {"appointment_id": "a1", "patient_id": "p1",
                        "starts_at": (now + timedelta(days=5)).isoformat()}}
    async with running(services):  # topics, consumers, timer and relays all authenticate
        producer = AIOKafkaProducer(bootstrap_servers=secured.kafka_bootstrap,
                                    **client_options(secured))
        await producer.start()
        await producer.send_and_wait(services.topics.appointments,
                                     json.dumps(booking).encode(), key=b"p1")
        await producer.stop()
        deadline = time.monotonic() + 60
        # consumed, enrolled, its timer fired, step.due consumed, the send relayed
        while services.dispatcher.relayed < 1:
            assert time.monotonic() < deadline, "the booking was not handled over SCRAM"
            await asyncio.sleep(0.05)
    services.close()


async def test_a_wrong_scram_password_is_refused(settings: Settings,
                                                 scram: tuple[str, str, str]) -> None:
    wrong = scram_settings(settings, scram, password="not-the-password")
    producer = AIOKafkaProducer(bootstrap_servers=wrong.kafka_bootstrap,
                                request_timeout_ms=5000, **client_options(wrong))
    with pytest.raises(KafkaError):
        await producer.start()
    await producer.stop()


def test_drip_connects_to_postgresql_as_a_role_that_is_not_a_superuser(
        settings: Settings) -> None:
    with psycopg.connect(settings.database_url) as conn:
        superuser, = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert superuser is False
