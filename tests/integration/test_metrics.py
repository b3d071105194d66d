"""Observability (§8) on the real Kafka and PostgreSQL: /metrics tells the true consumer
lag, dead letters, followers' distance to the head of the event log, sends per channel
and the lateness of fired steps; /health answers while the process lives; /ready only
while PostgreSQL and Kafka answer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import ConnectionPool

from contracts.receipts import DeliveryReceiptV1
from projections import consumer_positions, gateway_sends
from projections.gateway_sends import Claim
from services.adapters.clock import WallClock
from services.adapters.publisher import BulkPublisher
from services.bootstrap import Services, build
from services.entrypoints import metrics
from services.runtime import drain, running
from services.settings import Settings
from tests.gallery import CLINIC, appointment_reminders

Samples = dict[tuple[tuple[str, str], ...], float]


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings, WallClock())  # steps fall due on the wall clock, as in production
    built.app.apply_clinic(CLINIC)
    built.app.define_campaign(appointment_reminders())
    yield built
    built.close()


def client_for(settings: Settings, pool: ConnectionPool) -> TestClient:
    api = FastAPI()
    api.include_router(metrics.router(settings, pool))
    return TestClient(api)


async def scrape(client: TestClient) -> dict[str, Samples]:
    """/metrics as {sample name: {sorted labels: value}}."""
    response = await asyncio.to_thread(client.get, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[str, Samples] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def booking(patient: str, at: datetime) -> bytes:
    """appointment.booked now, for an appointment in three days: its confirmation is due
    at once, the 48-hour reminder tomorrow."""
    return json.dumps({
        "specversion": "1.0", "id": f"booked-{patient}", "source": "crm",
        "type": "appointment.booked", "time": at.isoformat(), "subject": patient,
        "clinicid": "vitoria", "data": {"appointment_id": f"a-{patient}", "patient_id": patient,
                                        "starts_at": (at + timedelta(days=3)).isoformat()}}).encode()


async def publish(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    upstream = BulkPublisher(settings.kafka_bootstrap)
    try:
        await upstream.publish_many(topic, [(k, v, {}) for k, v in records])
    finally:
        await upstream.stop()


def handled(services: Services, group: str) -> int:
    """Records the consumer group has handled (offsets start at 0 on fresh topics)."""
    with services.pool.connection() as conn, conn.cursor() as cur:
        return sum(p + 1 for p in consumer_positions.all_positions(cur, group).values())


async def until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        await asyncio.sleep(0.05)


def of(samples: Samples, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {k: v for k, v in samples.items() if labels.items() <= dict(k).items()}


def lateness(found: dict[str, Samples]) -> tuple[float, float]:
    return (found["drip_step_due_lateness_seconds_count"][()],
            found["drip_step_due_lateness_seconds_sum"][()])


async def test_once_drained_the_metrics_show_no_lag_the_dead_letter_and_fired_steps(
        settings: Settings, services: Services) -> None:  # §8
    client = client_for(settings, services.pool)
    count_before, sum_before = lateness(await scrape(client))
    now = datetime.now(UTC)
    async with running(services):
        await publish(settings, services.topics.appointments, [
            (b"p1", booking("p1", now)), (b"p2", booking("p2", now)), (b"p3", b"{not json")])
        # both confirmations fired by the timer and handled by the step-due consumer
        await until(lambda: handled(services, settings.upstream_group) == 3, "upstream")
        await until(lambda: handled(services, settings.step_due_group) == 2, "step.due")
        await drain(services)
        found = await scrape(client)
    assert found["drip_dependency_up"] == {(("dependency", "postgresql"),): 1,
                                           (("dependency", "kafka"),): 1}
    lag = found["drip_consumer_lag"]
    # every partition of every consumed topic: 3 upstream topics, step.due, receipts
    assert len(lag) == 5 * settings.partitions and set(lag.values()) == {0}
    assert len(of(lag, group=settings.upstream_group)) == 3 * settings.partitions
    assert found["drip_dead_letters"] == {
        (("consumer", settings.upstream_group), ("topic", services.topics.appointments)): 1}
    behind = found["drip_projection_behind"]
    assert (("name", "dispatcher"),) in behind and set(behind.values()) == {0}
    # the two confirmations, each observed once, fired within seconds of their due time
    count_after, sum_after = lateness(found)
    assert count_after - count_before == 2
    assert 0 <= sum_after - sum_before < 2 * 30
    assert found["drip_step_due_lateness_seconds_bucket"][(("le", "+Inf"),)] >= 2


async def test_lag_counts_what_was_published_while_the_consumers_were_stopped(
        settings: Settings, services: Services) -> None:  # §8
    client = client_for(settings, services.pool)
    now = datetime.now(UTC)
    async with running(services):
        await publish(settings, services.topics.appointments, [(b"p1", booking("p1", now))])
        await until(lambda: handled(services, settings.upstream_group) == 1, "the booking")
    # drip is stopped: these three wait on Kafka
    await publish(settings, services.topics.appointments,
                  [(p.encode(), booking(p, now)) for p in ("p2", "p3", "p4")])
    found = await scrape(client)
    lag = of(found["drip_consumer_lag"], group=settings.upstream_group)
    assert sum(of(lag, topic=services.topics.appointments).values()) == 3
    assert sum(lag.values()) == 3  # nothing on the other upstream topics
    assert min(lag.values()) >= 0


async def test_dispatches_are_counted_per_channel_and_outcome(
        settings: Settings, services: Services) -> None:  # §8 sends per channel, §6
    enrollment = uuid4()
    claims = [Claim(f"{enrollment}:{step}:1", "vitoria", "p1", enrollment, step, channel)
              for step, channel in (("a", "sms"), ("b", "sms"), ("c", "email"), ("d", "sms"))]

    def receipt(claim: Claim, outcome: str) -> tuple[str, str]:
        return claim.patient_id, DeliveryReceiptV1(
            outcome=outcome, idempotency_key=claim.idempotency_key,  # type: ignore[arg-type]
            enrollment_id=enrollment, clinic_id="vitoria", patient_id="p1", step=claim.step,
            channel=claim.channel, at=datetime.now(UTC), provider="relay", attempts=1,
        ).model_dump_json()

    # the services are not running: the receipts stay in the gateways' outbox
    with services.pool.connection() as conn, conn.cursor() as cur:
        gateway_sends.claim(cur, claims, 60, "test")
        gateway_sends.finish(cur, claims[0].idempotency_key, "sent", 1, "relay", "m1", None,
                             receipt(claims[0], "delivered"))
        gateway_sends.finish(cur, claims[1].idempotency_key, "failed", 3, None, None, "503",
                             receipt(claims[1], "failed"))
        gateway_sends.finish(cur, claims[2].idempotency_key, "sent", 1, "smtp", "m2", None,
                             receipt(claims[2], "delivered"))
    found = await scrape(client_for(settings, services.pool))
    assert found["drip_dispatches"] == {
        (("channel", "sms"), ("outcome", "sent")): 1, (("channel", "sms"), ("outcome", "failed")): 1,
        (("channel", "sms"), ("outcome", "sending")): 1,
        (("channel", "email"), ("outcome", "sent")): 1}
    assert found["drip_dispatch_receipts"] == {
        (("channel", "sms"), ("outcome", "delivered")): 1,
        (("channel", "sms"), ("outcome", "failed")): 1,
        (("channel", "email"), ("outcome", "delivered")): 1}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_health_and_ready_answer_while_postgresql_and_kafka_do(
        settings: Settings, services: Services) -> None:
    client = client_for(settings, services.pool)
    health = await asyncio.to_thread(client.get, "/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await asyncio.to_thread(client.get, "/ready")
    assert (ready.status_code, ready.json()) == (
        200, {"status": "ready", "postgresql": "ok", "kafka": "ok"})


@pytest.mark.parametrize("broken", ["postgresql", "kafka"])
async def test_not_ready_when_a_dependency_does_not_answer(settings: Settings,
                                                           broken: str) -> None:
    port = closed_port()
    changed: dict[str, Any] = (
        {"database_url": f"postgresql://drip:drip@127.0.0.1:{port}/drip"}
        if broken == "postgresql" else {"kafka_bootstrap": f"127.0.0.1:{port}"})
    bad = settings.model_copy(update=changed)
    with ConnectionPool(bad.database_url, min_size=1, open=True) as pool:
        client = client_for(bad, pool)
        started = time.monotonic()
        ready = await asyncio.to_thread(client.get, "/ready")
        assert time.monotonic() - started < 5  # ~2 s, never the clients' own long timeouts
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "unavailable" and body[broken] != "ok"
        assert body[{"postgresql": "kafka", "kafka": "postgresql"}[broken]] == "ok"
        # a scrape still answers, saying which source is missing
        found = await scrape(client)
        assert found["drip_dependency_up"][(("dependency", broken),)] == 0
        health = await asyncio.to_thread(client.get, "/health")
        assert health.status_code == 200
