"""The channel gateways (§6) against real local servers — an SMTP server and an HTTP
provider (services/devtools/sinks.py) — with the real PostgreSQL: rendering from the
campaign and the patient's details, idempotency, retries with backoff, timeouts,
permanent failures, contact points, signed delivery callbacks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.messages import DispatchRequestedV1
from contracts.receipts import DeliveryReceiptV1
from domain.enrollment import Enrollment, enrollment_id
from projections import gateway_sends, patients
from services.adapters.channels import message_id, sign
from services.application.records import ConsumedRecord
from services.bootstrap import GatewayProcess, Services, build, build_gateway
from services.devtools.sinks import ProviderSink, SmtpSink
from services.entrypoints.gateway import webhooks
from services.settings import Settings
from tests.gallery import CLINIC, appointment_reminders, no_show_recovery
from tests.integration.test_campaigns import booked, event

NOW = datetime.now(UTC).replace(microsecond=0)
REMINDERS = appointment_reminders()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def provider_sink(settings: Settings, **kw: Any) -> ProviderSink:
    return ProviderSink(settings.provider_secret.get_secret_value().encode(), **kw)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings)
    built.app.apply_clinic(CLINIC)
    built.app.define_campaign(REMINDERS)
    built.app.define_campaign(no_show_recovery())
    yield built
    built.close()


def gateway_for(settings: Settings, smtp: SmtpSink | None, provider: ProviderSink | None,
                **knobs: Any) -> GatewayProcess:
    update: dict[str, Any] = {"gateway_timeout_seconds": 0.5, **knobs}
    if smtp is not None:
        update |= {"smtp_host": "127.0.0.1", "smtp_port": smtp.port}
    if provider is not None:
        update["provider_url"] = provider.url
    return build_gateway(settings.model_copy(update=update),
                         [c for c, s in (("email", smtp), ("sms", provider),
                                         ("whatsapp", provider)) if s is not None])


def patient(services: Services, offset: int, patient_id: str = "p1", **contacts: str) -> None:
    services.app.handle_upstream("up", [event(offset, "patient.updated", {
        "patient_id": patient_id, "first_name": "Ana", **contacts}, at=NOW - timedelta(days=1))])


def sent_request(services: Services, appointment: str, step: str = "confirmation",
                 campaign: Any = REMINDERS) -> DispatchRequestedV1:
    """The dispatch request of a step this test makes the enrollment send."""
    e = services.app.repository.get(enrollment_id(campaign.id, appointment))
    assert isinstance(e, Enrollment)
    if step not in e.sent_steps:
        e.fire_step(services.app.campaigns.get(e.campaign_id), e.next_index, e.pending_due)
        services.app.save(e)
    sent = next(ev for ev in services.app.repository.event_store.get(e.id)
                if type(ev).__name__ == "MessageSent" and ev.step == step)
    return DispatchRequestedV1(
        idempotency_key=sent.idempotency_key, enrollment_id=e.id, clinic_id=e.clinic_id,
        patient_id=e.patient_id, campaign_id=e.campaign_id, step=step, channel=sent.channel,
        template=sent.template, due_at=sent.at)


def deliver(process: GatewayProcess, *requests: DispatchRequestedV1) -> int:
    batch = [ConsumedRecord("d", 0, i, None, None, message=r) for i, r in enumerate(requests)]
    try:
        return asyncio.run(_handle(process, batch))
    finally:
        process.close()


async def _handle(process: GatewayProcess, batch: list[ConsumedRecord[Any]]) -> int:
    try:
        return await process.gateway.handle(batch)
    finally:
        await process.gateway.close()


def receipts(services: Services) -> list[DeliveryReceiptV1]:
    with services.pool.connection() as conn, conn.cursor() as cur:
        found = gateway_sends.claim_receipts(cur, 100)
    return [DeliveryReceiptV1.model_validate_json(r) for _, _, r in found]


def test_sms_reaches_the_provider_rendered_signed_and_only_once(
        services: Services, settings: Settings) -> None:
    patient(services, 0, phone="+5527999990001")
    services.app.handle_upstream("up", [booked(1, "a1")])
    request = sent_request(services, "a1")
    with provider_sink(settings) as provider:
        assert deliver(gateway_for(settings, None, provider), request) == 1
        assert deliver(gateway_for(settings, None, provider), request) == 0  # redelivered
        assert provider.by_key == {request.idempotency_key: 1}
        (body,) = provider.requests
    assert body["to"] == "+5527999990001" and body["reference"] == request.idempotency_key
    assert body["body"].startswith("Clínica Vitória: consulta marcada para")
    with services.pool.connection() as conn, conn.cursor() as cur:
        assert gateway_sends.counts(cur) == {"sms": {"sent": 1}}
    assert receipts(services) == []  # delivered comes from the provider's callback


def test_email_over_smtp_with_headers_subject_and_body(
        services: Services, settings: Settings, smtp: SmtpSink) -> None:
    patient(services, 0, email="ana@pacientes.example")
    services.app.handle_upstream("up", [event(1, "appointment.missed", {
        "appointment_id": "a9", "patient_id": "p1",
        "starts_at": (NOW - timedelta(hours=1)).isoformat()}, at=NOW - timedelta(days=4))])
    recovery = no_show_recovery()
    sent_request(services, "a9", "we-missed-you", recovery)
    request = sent_request(services, "a9", "rebook-nudge", recovery)
    assert deliver(gateway_for(settings, smtp, None), request) == 1
    (mail,) = smtp.messages
    assert mail["To"] == "ana@pacientes.example"
    assert mail["Message-ID"] == message_id(request.idempotency_key)
    assert smtp.by_key == {request.idempotency_key.replace(":", "."): 1}
    assert mail["Subject"] == "Ana, vamos remarcar sua consulta?"
    assert "Olá Ana," in mail.get_content()
    (receipt,) = receipts(services)
    assert (receipt.outcome, receipt.provider, receipt.attempts) == ("delivered", "smtp", 1)


def test_a_provider_that_fails_twice_then_succeeds(services: Services,
                                                   settings: Settings) -> None:
    patient(services, 0, phone="+5527999990001")
    services.app.handle_upstream("up", [booked(1, "a1")])
    request = sent_request(services, "a1")
    with provider_sink(settings, fail_first=2) as provider:
        started = time.monotonic()
        deliver(gateway_for(settings, None, provider), request)
        took = time.monotonic() - started
        assert provider.attempts[request.idempotency_key] == 3
        assert provider.by_key == {request.idempotency_key: 1}
    assert took >= 0.1 + 0.2 * 0.9  # two backoffs (100 ms, then about 200 ms) were waited


def test_a_provider_that_hangs_is_timed_out_and_retried(services: Services,
                                                        settings: Settings) -> None:
    patient(services, 0, phone="+5527999990001")
    services.app.handle_upstream("up", [booked(1, "a1")])
    request = sent_request(services, "a1")
    with provider_sink(settings, hang_first=1, hang_seconds=2.0) as provider:
        deliver(gateway_for(settings, None, provider), request)
        assert provider.attempts[request.idempotency_key] == 2
        assert provider.unique() == 1


def test_three_transient_failures_fail_the_step_and_a_bad_number_fails_at_once(
        services: Services, settings: Settings) -> None:
    patient(services, 0, phone="+5527999990001")
    services.app.handle_upstream("up", [booked(2, "a1"), booked(3, "a2", "p2")])
    # a number the provider refuses (400); drip's own contract would not take it
    with services.pool.connection() as conn, conn.cursor() as cur:
        patients.write(cur, [patients.PatientRow("vitoria", "p2", {"phone": "+0001234567"})])
    down, invalid = sent_request(services, "a1"), sent_request(services, "a2")
    with provider_sink(settings, fail_first=10) as provider:
        deliver(gateway_for(settings, None, provider), down)
        assert provider.attempts == {down.idempotency_key: 3}
    with provider_sink(settings) as provider:
        deliver(gateway_for(settings, None, provider), invalid)
        assert provider.attempts == {invalid.idempotency_key: 1}
    outcomes = {r.idempotency_key: (r.outcome, r.permanent, r.attempts) for r in receipts(services)}
    assert outcomes == {down.idempotency_key: ("failed", False, 3),
                        invalid.idempotency_key: ("failed", True, 1)}


def test_no_contact_point_is_a_failed_outcome_not_an_exception(
        services: Services, settings: Settings, smtp: SmtpSink) -> None:
    services.app.handle_upstream("up", [booked(0, "a1")])  # nothing known about p1
    request = sent_request(services, "a1").model_copy(update={"channel": "email"})
    deliver(gateway_for(settings, smtp, None), request)
    (receipt,) = receipts(services)
    assert (receipt.outcome, receipt.error) == ("failed", "no_contact_point")
    assert smtp.messages == []


def test_a_hard_bounce_invalidates_the_contact_point(services: Services, settings: Settings,
                                                     smtp: SmtpSink) -> None:
    patient(services, 0, email="ana@bounce.invalid")
    services.app.handle_upstream("up", [booked(1, "a1")])
    request = sent_request(services, "a1").model_copy(update={"channel": "email"})
    deliver(gateway_for(settings, smtp, None), request)
    (receipt,) = receipts(services)
    assert (receipt.outcome, receipt.permanent) == ("bounced", True)
    record = ConsumedRecord("r", 0, 0, None, None, message=receipt)
    services.app.handle_receipts("receipts", [record])
    from domain.patient import patient_id_of
    p = services.app.repository.get(patient_id_of("vitoria", "p1"))
    assert p.invalid_contacts == ["email"] and p.contact("email") is None
    e = services.app.repository.get(request.enrollment_id)
    assert e.receipts == {"confirmation": ["bounced"]}


def test_webhook_signatures_and_callbacks(services: Services, settings: Settings) -> None:
    patient(services, 0, phone="+5527999990001")
    services.app.handle_upstream("up", [booked(1, "a1")])
    request = sent_request(services, "a1")
    with provider_sink(settings) as provider:
        process = gateway_for(settings, None, provider)
        try:
            asyncio.run(_handle(process, [ConsumedRecord("d", 0, 0, None, None,
                                                         message=request)]))
            with services.pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT provider_message_id FROM gateway_sends")
                (provider_id,) = cur.fetchone()
            client = _client(process)
            body = json.dumps({"id": provider_id, "reference": request.idempotency_key,
                               "status": "delivered", "at": NOW.isoformat()}).encode()
            secret = settings.webhook_secret.get_secret_value().encode()
            assert client.post("/webhooks/relay", content=body, headers={
                "X-Provider-Signature": "sha256=" + "0" * 64}).status_code == 401
            assert client.post("/webhooks/relay", content=body).status_code == 401
            assert client.post("/webhooks/relay", content=body, headers={
                "X-Provider-Signature": sign(secret, body)}).status_code == 202
            unknown = body.replace(provider_id.encode(), b"msg_unknown")
            assert client.post("/webhooks/relay", content=unknown, headers={
                "X-Provider-Signature": sign(secret, unknown)}).status_code == 404
        finally:
            process.close()
    (receipt,) = receipts(services)
    assert (receipt.outcome, receipt.provider_message_id) == ("delivered", provider_id)


def _client(process: GatewayProcess) -> httpx.Client:
    from fastapi.testclient import TestClient

    return TestClient(webhooks(process.gateway, process.settings))


def test_the_clinics_budget_holds_across_two_gateway_instances(
        services: Services, settings: Settings) -> None:
    """§5 throughput with two gateways sharing the work: the budget (10 SMS a second for the
    clinic) is taken from PostgreSQL by both, so together they grant no more than 10 a
    second: 60 messages need at least 6 one-second windows. Two budgets of their own would
    let 20 a second through."""
    for n in range(60):
        patient(services, 1000 + 2 * n, f"p{n}", phone=f"+55279999{n:05d}")
        services.app.handle_upstream("up", [booked(1001 + 2 * n, f"a{n}", f"p{n}")])
    requests = [sent_request(services, f"a{n}") for n in range(60)]
    with provider_sink(settings) as provider:
        first, second = (gateway_for(settings, None, provider, gateway_rate=10.0)
                         for _ in range(2))

        async def both() -> list[int]:
            batches = ([ConsumedRecord("d", 0, i, None, None, message=r)
                        for i, r in enumerate(requests[part::2])] for part in (0, 1))
            try:
                return list(await asyncio.gather(*(p.gateway.handle(b) for p, b in
                                                   zip((first, second), batches, strict=True))))
            finally:
                for p in (first, second):
                    await p.gateway.close()
        try:
            assert asyncio.run(both()) == [30, 30]
        finally:
            first.close()
            second.close()
        assert sorted(provider.by_key.values()) == [1] * 60  # each once
        times = sorted(provider.accepted_at)
    granted_windows = int(times[-1]) - int(times[0]) + 1
    assert granted_windows >= 6, f"60 messages in {granted_windows} one-second windows"
    for start in times:  # any 3 seconds: at most 3 windows' budgets (+1 started late)
        assert sum(start <= t < start + 3 for t in times) <= 40
