"""Issue 6 on the real Kafka and PostgreSQL: no record stalls a partition, standard
CloudEvents producers just work, the timer idles, drip owns its topics, SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from cloudevents.core.bindings.kafka import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from projections import dead_letters
from services.adapters.clock import WallClock
from services.application.records import ConsumedRecord
from services.bootstrap import Services, build
from services.entrypoints.subscribers import parse_upstream
from services.runtime import running
from services.settings import Settings
from tests.gallery import appointment_reminders
from tests.integration.test_pipeline import read_topic

STARTS = "2030-05-04T13:00:00Z"


def booked(event_id: str, patient: str, appointment: str, time: str = "2030-04-29T10:00:00Z",
           starts_at: str = STARTS, **envelope: object) -> dict:
    return {"specversion": "1.0", "id": event_id, "source": "crm", "type": "appointment.booked",
            "time": time, "subject": patient, "clinicid": "vitoria",
            "data": {"appointment_id": appointment, "patient_id": patient,
                     "starts_at": starts_at}, **envelope}


def wall_services(settings: Settings) -> Services:
    services = build(settings, WallClock())
    services.app.define_campaign(appointment_reminders())
    return services


async def until(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        await asyncio.sleep(0.05)


def query(services: Services, read: Callable) -> object:
    with services.pool.connection() as conn, conn.cursor() as cur:
        return read(cur)


def enrolled(services: Services) -> int:
    return int(query(services, lambda cur: cur.execute(  # type: ignore[arg-type]
        "SELECT count(*) FROM active_enrollments").fetchone()[0]))


async def test_no_poison_record_stalls_the_partition_behind_it(settings: Settings) -> None:
    poison: list[tuple[bytes | None, bytes | None]] = [  # each once stalled or misled drip
        (b"p1", json.dumps(booked("1", "p1", "a1", time="0001-01-01T00:30+01:00")).encode()),
        (b"p1", json.dumps(booked("2", "p1", "a2", time="9999-12-31T23:30-01:00")).encode()),
        (b"p1", json.dumps(booked("3", "p1", "a\x003")).encode()),
        (b"p" * 100_000, json.dumps(booked("4", "p" * 100_000, "a4")).encode()),
        (b"p1", json.dumps(booked("5", "p1", "a5", starts_at=1764000000)).encode()),  # type: ignore[arg-type]
        (b"p1", json.dumps(booked("6", "p1", "a6", time="0001-01-01T00:00:00Z")).encode()),
        (b"someone-else", json.dumps(booked("7", "p1", "a7")).encode()),
        (b"p1", None),
    ]
    services = wall_services(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                max_request_size=4 << 20)
    async with running(services):
        await producer.start()
        for key, value in [*poison, (b"p1", json.dumps(booked("8", "p1", "a8")).encode())]:
            await producer.send_and_wait(services.topics.appointments, value, key=key,
                                         partition=0)  # all behind each other
        await producer.stop()
        await until(lambda: enrolled(services) == 1, "the good booking behind the poison")
        await until(lambda: query(services, dead_letters.count) == len(poison), "dead letters")
    reasons = sorted(d.reason for d in query(services, dead_letters.listing))  # type: ignore[attr-defined]
    assert sum("timestamp out of range" in r for r in reasons) == 2
    assert sum("must lie between 1900 and 2200" in r for r in reasons) == 1
    assert sum("not a number" in r for r in reasons) == 1
    assert sum("the Kafka key must be the patient id" in r for r in reasons) == 1
    assert sum("tombstone" in r for r in reasons) == 1
    services.close()


async def test_standard_cloudevents_producers_are_accepted_in_both_modes(
        settings: Settings) -> None:  # issue 6 §7, §9: the CloudEvents SDK's Kafka binding
    def event(event_id: str, appointment: str) -> CloudEvent:
        return CloudEvent(attributes={
            "type": "appointment.booked", "source": "urn:booking", "id": event_id,
            "time": datetime(2030, 4, 29, 10, tzinfo=UTC), "subject": "p1",
            "clinicid": "vitoria", "dataversion": 1, "datacontenttype": "application/json",
            "partitionkey": "p1"},
            data={"appointment_id": appointment, "patient_id": "p1", "starts_at": STARTS})

    services = wall_services(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    async with running(services):
        await producer.start()
        for message in (to_structured(event("s", "a-structured"), JSONFormat()),
                        to_binary(event("b", "a-binary"), JSONFormat())):
            key = message.key.encode() if isinstance(message.key, str) else message.key
            await producer.send_and_wait(services.topics.appointments, message.value, key=key,
                                         headers=list(message.headers.items()))
        await producer.stop()
        await until(lambda: enrolled(services) == 2, "both bookings enrolled")
    assert query(services, dead_letters.count) == 0
    services.close()


async def test_a_dead_letter_near_the_size_limit_still_reaches_the_topic(
        settings: Settings) -> None:  # issue 6 §6
    services = wall_services(settings)
    value = b"{" + b"x" * 1_000_000  # malformed, and just under the broker's 1 MiB default
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                max_request_size=2 << 20)
    async with running(services):
        await producer.start()
        await producer.send_and_wait(services.topics.appointments, value, key=b"p1",
                                     headers=[("traceparent", b"00-abc-01")])
        await producer.stop()
        letters = await read_topic(settings.kafka_bootstrap, services.topics.dead_letters, 1)
    (key, got, headers), = letters
    assert (key, got, headers["traceparent"]) == (b"p1", value, "00-abc-01")
    services.close()


async def test_drip_creates_its_topics_with_the_configured_partitions(settings: Settings) -> None:
    services = wall_services(settings.model_copy(update={"partitions": 3}))
    async with running(services):
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(services.topics.all)
            configs = await admin.describe_configs([ConfigResource(
                ConfigResourceType.TOPIC, services.topics.dead_letters)])
        finally:
            await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(
        services.topics.all, 3)
    entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
    assert int(entries["max.message.bytes"]) > 1 << 20
    services.close()


async def test_idle_loops_sleep_and_a_notify_wakes_them(settings: Settings) -> None:
    # issue 6 §5: it used to run ~900 transactions/s with nothing to do
    services = build(settings.model_copy(update={"idle_seconds": 30.0}), WallClock())
    services.app.define_campaign(appointment_reminders())
    rounds = 0
    relay_once = services.timer.relay_once

    async def counted() -> int:
        nonlocal rounds
        rounds += 1
        return await relay_once()

    services.timer.relay_once = counted  # type: ignore[method-assign]
    async with running(services):
        await asyncio.sleep(2)
        assert rounds <= 3
        # a booking whose confirmation is due now: its timer row NOTIFYs the sleeping timer
        now = datetime.now(UTC)
        doc = booked("1", "p1", "a1", time=now.isoformat(),
                     starts_at=(now + timedelta(days=5)).isoformat())
        raw = json.dumps(doc).encode()
        await asyncio.to_thread(services.app.handle_upstream, "up", [ConsumedRecord(
            "t", 0, 0, b"p1", raw, message=parse_upstream(b"p1", raw, ()))])
        started = time.monotonic()
        await until(lambda: services.timer.fired == 1, "the timer to fire", seconds=10)
        assert time.monotonic() - started < 5  # woken, not the 30 s idle timeout
        # the send's events NOTIFY the sleeping dispatcher too (LISTEN, not polling)
        await until(lambda: services.dispatcher.relayed == 1, "the dispatcher", seconds=10)
        assert time.monotonic() - started < 5
    services.close()


def test_sigterm_stops_drip_serve_cleanly(settings: Settings) -> None:  # issue 6 §8
    env = {**os.environ, **settings.as_env()}
    serve = subprocess.Popen([sys.executable, "-m", "services.cli", "serve"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        groups = None
        while time.monotonic() < deadline and not groups:
            time.sleep(0.2)  # serving: the consumer groups have joined
            groups = asyncio.run(_groups(settings))
        assert groups, "drip serve never joined its consumer groups"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=45) == 0, serve.stdout.read() if serve.stdout else ""
    finally:
        if serve.poll() is None:
            serve.kill()


async def _groups(settings: Settings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return [g for g, _ in await admin.list_consumer_groups()
                if g.startswith(settings.consumer_prefix)]
    finally:
        await admin.close()
