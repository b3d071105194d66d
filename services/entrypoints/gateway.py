"""The channel gateways (§6): `drip gateway CHANNEL…` consumes dispatch requests, renders
each message from the enrollment's campaign version and the patient's details, sends it
through the channel's adapter, and records the outcome as a receipt.

Per request, in order:
1. **Idempotency.** The key is claimed in `gateway_sends` (a PostgreSQL primary key,
   leased) before any provider is called; a key already sent or failed is never sent
   again, whatever Kafka redelivers.
2. **Contact point** from the patient read model (`patients`), never from the Kafka key;
   none (or one a hard bounce invalidated) → `failed: no_contact_point`.
3. **Rendering** (`domain.templating`) in the clinic's zone and locale.
4. **Throughput** (§5): a budget per clinic and channel per second, shared by every
   gateway instance through PostgreSQL (`gateway_budget`), smoothed in-process by an
   `aiolimiter.AsyncLimiter`.
5. **Sending** with retries (stamina: exponential backoff with jitter, at most
   `gateway_attempts` attempts) on transient failures; a permanent failure fails at once.
6. **Receipt**: the ledger row and the receipt are written in one transaction; the receipt
   relay publishes it. HTTP providers confirm delivery later through
   `POST /webhooks/{provider}` (signature checked; 401 otherwise).
Logs carry keys and ids only: no bodies, phone numbers or e-mail addresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import stamina
import structlog
from aiolimiter import AsyncLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from psycopg_pool import ConnectionPool
from pydantic import SkipValidation, ValidationError

from contracts.envelope import InvalidMessage
from contracts.messages import DispatchRequestedV1
from contracts.receipts import DeliveryReceiptV1
from contracts.topics import Topics
from domain.campaign import CampaignDefinition, SendStep
from domain.enrollment import Enrollment
from domain.schedule import APPOINTMENT_STARTS_AT, BENEFITS_EXPIRES_ON
from domain.templating import MessageTemplate, TemplateError, render
from projections import gateway_sends, patients
from projections.gateway_sends import Claim
from projections.patients import PatientRow
from services.adapters.channels import (
    ChannelAdapter,
    HttpProviderAdapter,
    Message,
    PermanentFailure,
    SmtpAdapter,
    TransientFailure,
    verify,
)
from services.application.app import DripApplication
from services.application.records import ConsumedRecord
from services.entrypoints.http import serve_http
from services.entrypoints.subscribers import consumed
from services.settings import Settings

log = structlog.get_logger("drip.gateway")
CONTACT_FIELD = {"email": "email", "sms": "phone", "whatsapp": "whatsapp"}


class Gateway:
    """Delivers the dispatch requests of `channels` through `adapters` (one per channel)."""

    def __init__(self, settings: Settings, app: DripApplication, pool: ConnectionPool,
                 adapters: dict[str, ChannelAdapter]) -> None:
        self.settings, self.app, self.pool, self.adapters = settings, app, pool, adapters
        self.channels = tuple(sorted(adapters))
        self.lease_seconds = settings.gateway_attempts * (settings.gateway_timeout_seconds + 5)
        self._slots = asyncio.Semaphore(settings.gateway_concurrency)
        self._limiters: dict[tuple[str, str], AsyncLimiter] = {}
        self._outcomes: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- a batch of dispatch requests ------------------------------------------------------
    async def handle(self, batch: Sequence[ConsumedRecord[DispatchRequestedV1]]) -> int:
        """Deliver the batch's requests for this gateway's channels; returns how many it
        claimed. Returns after every claimed one has an outcome (sent or failed)."""
        mine = {r.message.idempotency_key: r.message for r in batch
                if r.message is not None and r.message.channel in self.channels}
        if not mine:
            return 0
        granted = await asyncio.to_thread(self._claim, list(mine.values()))
        todo = [mine[k] for k in mine if k in granted]
        if not todo:
            return 0
        people, enrollments = await asyncio.to_thread(self._context, todo)
        groups: dict[tuple[str, str], list[DispatchRequestedV1]] = {}
        for r in todo:
            groups.setdefault((r.clinic_id, r.channel), []).append(r)

        async def deliver(r: DispatchRequestedV1) -> None:
            await self._deliver(r, people.get((r.clinic_id, r.patient_id)),
                                enrollments.get(r.enrollment_id))
        await asyncio.gather(*(self._within_budget(key, group, deliver)
                               for key, group in groups.items()))
        return len(todo)

    def _claim(self, requests: list[DispatchRequestedV1]) -> set[str]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            return gateway_sends.claim(cur, [Claim(
                r.idempotency_key, r.clinic_id, r.patient_id, r.enrollment_id, r.step,
                r.channel) for r in requests], self.lease_seconds, self.instance)

    def _context(self, requests: list[DispatchRequestedV1],
                 ) -> tuple[dict[tuple[str, str], PatientRow], dict[Any, Enrollment]]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            people = patients.of(cur, [(r.clinic_id, r.patient_id) for r in requests])
        loaded = self.app.load_aggregates({r.enrollment_id for r in requests})
        return people, {k: v for k, v in loaded.items() if isinstance(v, Enrollment)}

    # -- one message -------------------------------------------------------------------
    async def _deliver(self, request: DispatchRequestedV1, person: PatientRow | None,
                       enrollment: Enrollment | None) -> None:
        async with self._slots:
            contact = _contact(person, request.channel)
            if contact is None:
                return await self._finish(request, "failed", 0, None, None, "no_contact_point",
                                          outcome="failed", permanent=True)
            try:
                message = self._message(request, contact, person, enrollment)
            except (TemplateError, LookupError) as exc:
                return await self._finish(request, "failed", 0, None, None,
                                          f"template: {exc}"[:300], outcome="failed",
                                          permanent=True)
            attempts = 0
            try:
                async for attempt in stamina.retry_context(
                        on=TransientFailure, attempts=self.settings.gateway_attempts,
                        timeout=None, wait_initial=0.1, wait_max=5.0, wait_jitter=0.1):
                    with attempt:
                        attempts += 1
                        sent = await self.adapters[request.channel].send(message)
            except TransientFailure as exc:
                # the code only: a server's own text may name the recipient (the whole
                # error is in the ledger and the receipt)
                log.warning("delivery failed after retries", key=request.idempotency_key,
                            channel=request.channel, attempts=attempts,
                            error=str(exc).split(":", 1)[0])
                return await self._finish(request, "failed", attempts, None, None, str(exc),
                                          outcome="failed")
            except PermanentFailure as exc:
                log.warning("delivery refused", key=request.idempotency_key,
                            channel=request.channel, error=str(exc).split(":", 1)[0])  # as above
                return await self._finish(request, "failed", attempts,
                                          self.adapters[request.channel].name, None, str(exc),
                                          outcome="bounced" if exc.bounced else "failed",
                                          permanent=True)
            await self._finish(request, "sent", attempts, sent.provider,
                               sent.provider_message_id, None,
                               outcome="delivered" if sent.delivered else None)

    async def _finish(self, request: DispatchRequestedV1, state: str, attempts: int,
                      provider: str | None, provider_id: str | None, error: str | None, *,
                      outcome: str | None, permanent: bool = False) -> None:
        receipt = None
        if outcome is not None:
            receipt = (request.patient_id, DeliveryReceiptV1(
                outcome=outcome, idempotency_key=request.idempotency_key,  # type: ignore[arg-type]
                enrollment_id=request.enrollment_id, clinic_id=request.clinic_id,
                patient_id=request.patient_id, step=request.step, channel=request.channel,
                at=datetime.now(UTC), provider=provider or "gateway",
                provider_message_id=provider_id, attempts=attempts, error=error,
                permanent=permanent).model_dump_json())

        done = asyncio.get_running_loop().create_future()
        self._outcomes.append(((request.idempotency_key, state, attempts, provider,
                                provider_id, error, receipt), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_outcomes())
        await done

    async def _write_outcomes(self) -> None:
        """Outcomes waiting to be recorded, many per transaction (a commit is a disk
        flush; one per message capped a gateway at a few dozen messages a second). Each
        `_finish` returns once its own outcome is committed."""
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []

            try:
                await asyncio.to_thread(self._write, [args for args, _ in batch])
            except Exception as exc:
                for _, waiter in batch:
                    waiter.set_exception(exc)
            else:
                for _, waiter in batch:
                    waiter.set_result(None)

    def _write(self, outcomes: list[tuple[Any, ...]]) -> None:
        with self.pool.connection() as conn, conn.cursor() as cur:
            for args in outcomes:
                gateway_sends.finish(cur, *args)

    def _message(self, request: DispatchRequestedV1, contact: str,
                 person: PatientRow | None, enrollment: Enrollment | None) -> Message:
        """The message as the patient receives it: the enrollment's campaign version's
        template, with the patient's details, in the clinic's zone and locale."""
        if enrollment is None:
            raise LookupError(f"unknown enrollment {request.enrollment_id}")
        campaign = self.app.campaigns.get(enrollment.campaign_id, enrollment.campaign_version)
        step = campaign.steps[campaign.index_of(request.step)]
        template = (step.message if isinstance(step, SendStep) and step.message
                    else MessageTemplate(body=request.template))
        rendered = render(template, self._context_of(request, campaign, person, enrollment),
                          locale=campaign.locale, time_zone=campaign.time_zone)
        return Message(request.idempotency_key, request.channel, contact, rendered.body,
                       rendered.subject)

    def _context_of(self, request: DispatchRequestedV1, campaign: CampaignDefinition,
                    person: PatientRow | None, e: Enrollment) -> dict[str, Any]:
        details = person.details if person else {}
        clinic = self.app.campaigns.clinic(campaign.clinic_id)
        expires = e.dates.get(BENEFITS_EXPIRES_ON)
        return {
            "patient": {"id": e.patient_id, "first_name": details.get("first_name", ""),
                        "last_name": details.get("last_name", ""),
                        "language": details.get("language", campaign.locale)},
            "appointment": {"id": e.subject if campaign.subject == "appointment" else "",
                            "starts_at": e.dates.get(APPOINTMENT_STARTS_AT), "location": ""},
            "benefits": {"remaining": e.attributes.get("benefits.remaining", 0),
                         "expires_on": campaign.calendar.local(expires).date() if expires else None,
                         "currency": e.attributes.get("benefits.currency", "BRL")},
            "clinic": {"id": campaign.clinic_id, "name": clinic.name if clinic else "",
                       "phone": clinic.phone if clinic else "",
                       "time_zone": campaign.time_zone, "language": campaign.locale,
                       "booking_url": clinic.booking_url if clinic else ""},
            "campaign": {"name": campaign.name, "step": request.step},
            "enrollment": {"id": str(e.id), "progress": "", "incentive_code": "",
                           "variant": next(iter(e.variants.values()), "")},
            "unsubscribe_url": f"{self.settings.unsubscribe_url}/{self._token(request)}",
        }

    def _token(self, request: DispatchRequestedV1) -> str:
        key = self.settings.webhook_secret.get_secret_value().encode()
        return hmac.new(key, f"{request.clinic_id}:{request.patient_id}".encode(),
                        hashlib.sha256).hexdigest()[:24]

    async def _within_budget(self, key: tuple[str, str], requests: list[DispatchRequestedV1],
                             deliver: Callable[[DispatchRequestedV1], Awaitable[None]]) -> None:
        """§5 throughput: start these messages of one clinic and channel no faster than its
        per-second budget, shared by all gateway instances (taken from PostgreSQL in
        slices: one transaction per slice, not per message) and smoothed here by
        `aiolimiter`; returns when all are delivered or failed."""
        rate = self._rate(*key)
        limiter = self._limiters.setdefault(key, AsyncLimiter(rate, 1.0))
        pending, started = list(requests), []
        while pending:
            granted = await asyncio.to_thread(self._reserve, key, rate, len(pending))
            if not granted:
                await asyncio.sleep(1.0 - time.time() % 1.0)
                continue
            for r in pending[:granted]:
                await limiter.acquire()
                started.append(asyncio.create_task(deliver(r)))
            pending = pending[granted:]
        await asyncio.gather(*started)

    def _rate(self, clinic_id: str, channel: str) -> float:
        clinic = self.app.campaigns.clinic(clinic_id)
        per_channel = (clinic.limits.get("messages_per_second") or {}) if clinic else {}
        return float(per_channel.get(channel) or self.settings.gateway_rate)

    def _reserve(self, key: tuple[str, str], rate: float, wanted: int) -> int:
        with self.pool.connection() as conn, conn.cursor() as cur:
            return gateway_sends.reserve(cur, key[0], key[1], int(rate), wanted)[1]

    # -- delivery callbacks ------------------------------------------------------------
    def callback(self, provider: str, provider_message_id: str, status: str,
                 at: datetime, error: str | None) -> bool:
        """A provider's delivery callback → a receipt (§6). Returns False for a message id
        the ledger does not know."""
        def write() -> bool:
            with self.pool.connection() as conn, conn.cursor() as cur:
                row = gateway_sends.by_provider_id(cur, provider, provider_message_id)
                if row is None:
                    return False
                receipt = DeliveryReceiptV1(
                    outcome=status, idempotency_key=row["idempotency_key"],  # type: ignore[arg-type]
                    enrollment_id=row["enrollment_id"], clinic_id=row["clinic_id"],
                    patient_id=row["patient_id"], step=row["step"], channel=row["channel"],
                    at=at, provider=provider, provider_message_id=provider_message_id,
                    attempts=row["attempts"], error=error, permanent=status == "bounced")
                gateway_sends.add_receipt(cur, row["patient_id"], receipt.model_dump_json())
                return True
        return write()

    async def close(self) -> None:
        for adapter in self.adapters.values():
            await adapter.close()


def _contact(person: PatientRow | None, channel: str) -> str | None:
    if person is None or channel in person.invalid:
        return None
    return person.details.get(CONTACT_FIELD.get(channel, ""))


# -- the process: consumer, webhook server ---------------------------------------------
def parse_dispatch(key: bytes | None, value: bytes | None, headers: Any) -> DispatchRequestedV1:
    try:
        return DispatchRequestedV1.model_validate_json(value or b"")
    except ValidationError as exc:
        raise InvalidMessage(f"invalid dispatch request: {exc.errors()[0]['msg']}") from None


def register(broker: KafkaBroker, settings: Settings, gateway: Gateway) -> None:
    """The gateway's subscriber on the dispatch-requests topic: its own consumer group per
    channel set; a batch is acknowledged once every request in it has an outcome."""
    topics = Topics(settings.topic_prefix)
    group = settings.gateway_group(gateway.channels)

    @broker.subscriber(topics.dispatch, group_id=group, batch=True, max_records=500,
                       batch_timeout_ms=20, auto_offset_reset="earliest",
                       ack_policy=AckPolicy.NACK_ON_ERROR, decoder=_undecoded,
                       description=f"Gateway for {', '.join(gateway.channels)} (§6)")
    async def on_dispatch(body: SkipValidation[list[DispatchRequestedV1]],
                          msg: KafkaMessage) -> None:
        batch = consumed(msg.raw_message, parse_dispatch)
        for r in batch:
            if r.error is not None:
                log.warning("refused dispatch request", topic=r.topic, partition=r.partition,
                            offset=r.offset, reason=r.error)
        started = time.monotonic()
        claimed = await gateway.handle(batch)
        log.debug("batch delivered", records=len(batch), claimed=claimed,
                  seconds=round(time.monotonic() - started, 3))


def _undecoded(msg: Any) -> None:
    return None


def webhooks(gateway: Gateway, settings: Settings) -> FastAPI:
    """`POST /webhooks/{provider}`: a provider's signed delivery callback (§6) →
    a receipt. 401 for a bad signature, 404 for an unknown provider or message id."""
    api = FastAPI(title="drip gateway webhooks", docs_url=None, redoc_url=None)
    secret = settings.webhook_secret.get_secret_value().encode()

    @api.post("/webhooks/{provider}")
    async def callback(provider: str, request: Request) -> JSONResponse:
        body = await request.body()
        if not verify(secret, body, request.headers.get("X-Provider-Signature")):
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        if provider != settings.provider_name:
            return JSONResponse({"error": f"unknown provider {provider!r}"}, status_code=404)
        try:
            doc = json.loads(body)
            status, message_id = doc["status"], str(doc["id"])
            at = datetime.fromisoformat(str(doc.get("at") or datetime.now(UTC).isoformat())
                                        .replace("Z", "+00:00"))
            if status not in ("delivered", "failed", "bounced", "opened", "clicked"):
                raise ValueError(f"unknown status {status!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"malformed callback: {exc}"}, status_code=422)
        known = await asyncio.to_thread(gateway.callback, provider, message_id, status,
                                        at.astimezone(UTC), doc.get("error"))
        if not known:
            return JSONResponse({"error": "unknown message id"}, status_code=404)
        return JSONResponse({"ok": True}, status_code=202)

    @api.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


async def serve_webhooks(gateway: Gateway, settings: Settings) -> None:
    """The webhook server (uvicorn) until cancelled."""
    await serve_http(webhooks(gateway, settings), settings.gateway_host, settings.gateway_port)


def adapters_for(settings: Settings, channels: Sequence[str]) -> dict[str, ChannelAdapter]:
    """The adapter of each channel: e-mail over SMTP, SMS and WhatsApp over the HTTP
    provider. A real provider is one more adapter class chosen here."""
    http = HttpProviderAdapter(settings) if {"sms", "whatsapp"} & set(channels) else None
    out: dict[str, ChannelAdapter] = {}
    for channel in channels:
        if channel == "email":
            out[channel] = SmtpAdapter(settings)
        elif channel in ("sms", "whatsapp") and http is not None:
            out[channel] = http
        else:
            raise ValueError(f"no gateway for channel {channel!r}")
    return out
