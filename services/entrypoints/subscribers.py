"""FastStream Kafka subscribers: upstream events and `step.due` timers.

Each subscriber takes batches, parses every record itself (a malformed one is
dead-lettered once instead of being redelivered forever), hands the batch to one use
case, and acknowledges only after the PostgreSQL commit (`AckPolicy.NACK_ON_ERROR`:
an infrastructure failure rewinds and retries). Positions kept in PostgreSQL make a
redelivery a no-op; dead letters are rows of the same transaction, published by the
dead-letter relay. Bodies are typed for the AsyncAPI document but not decoded by
FastStream (`SkipValidation`, a no-op decoder).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import stamina
import structlog
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import SkipValidation, ValidationError

from contracts.envelope import InvalidMessage, parse_cloudevent
from contracts.receipts import DeliveryReceiptV1
from contracts.timers import StepDueV1
from contracts.topics import UPSTREAM_SCHEMAS, Topics, UpstreamEvent
from services.adapters.clock import Clock
from services.adapters.failures import Failure, classify
from services.adapters.log_throttle import ThrottledLogger
from services.application.app import DripApplication
from services.application.records import ConsumedRecord, Headers
from services.application.unit_of_work import UnitOfWork
from services.entrypoints.metrics import observed
from services.settings import Settings

log = structlog.get_logger("drip.subscribers")
throttled = ThrottledLogger(log, every_seconds=30.0)
TRANSIENT_SECONDS = 30.0  # then the batch is nacked (and comes again), so Kafka sees a poll
UNKNOWN_ATTEMPTS = 3


class SystemicFailure(RuntimeError):
    """Record after record fails in the handler: a bug, not bad records. The batch is not
    acknowledged and the process stops, instead of dead-lettering everything."""


class Breaker:
    """Trips after `limit` records in a row failed for reasons of their own content (not
    refused by a contract): one bad record is a dead letter, twenty in a row are a bug.
    `tripped()` returns (raising `SystemicFailure`) once it has; the supervisor awaits it."""

    def __init__(self, limit: int = 20) -> None:
        self.limit, self.in_a_row = limit, 0
        self._tripped = asyncio.Event()
        self.error: SystemicFailure | None = None

    def handled(self) -> None:
        self.in_a_row = 0

    def unprocessable(self, consumer: str, exc: BaseException) -> None:
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            self.error = SystemicFailure(
                f"{self.in_a_row} records in a row failed in {consumer}: "
                f"{type(exc).__name__}: {exc}"[:2000])
            self._tripped.set()
            raise self.error

    async def tripped(self) -> None:
        await self._tripped.wait()
        assert self.error is not None
        raise self.error
M = TypeVar("M")
UseCase = Callable[[str, Sequence[ConsumedRecord[M]]], UnitOfWork]


def parse_upstream(key: bytes | None, value: bytes | None, headers: Headers) -> UpstreamEvent:
    """A CloudEvent in binary or structured mode, keyed by its patient id (§9)."""
    event: Any = parse_cloudevent(value, headers, UPSTREAM_SCHEMAS)
    if key != event.data.patient_id.encode():
        raise InvalidMessage("the Kafka key must be the patient id (data.patient_id)")
    return event  # type: ignore[no-any-return]


def parse_step_due(key: bytes | None, value: bytes | None, headers: Headers) -> StepDueV1:
    try:
        return StepDueV1.model_validate_json(value or b"")
    except ValidationError as exc:
        raise InvalidMessage(f"invalid step.due: {exc.errors()[0]['msg']}") from None


def parse_receipt(key: bytes | None, value: bytes | None, headers: Headers) -> DeliveryReceiptV1:
    try:
        return DeliveryReceiptV1.model_validate_json(value or b"")
    except ValidationError as exc:
        raise InvalidMessage(f"invalid receipt: {exc.errors()[0]['msg']}") from None


def consumed(records: Sequence[Any],
             parse: Callable[[bytes | None, bytes | None, Headers], M]) -> list[ConsumedRecord[M]]:
    """aiokafka records → `ConsumedRecord`s, each parsed or refused with its reason."""
    out: list[ConsumedRecord[M]] = []
    for r in records:
        # Kafka allows a header without a value; drip records it as empty (b"")
        headers = tuple((k, b"" if v is None else v) for k, v in r.headers or ())
        base = ConsumedRecord[M](r.topic, r.partition, r.offset, r.key, r.value, headers)
        try:
            out.append(replace(base, message=parse(r.key, r.value, base.headers)))
        except InvalidMessage as exc:
            out.append(replace(base, error=exc.reason))
    return out


async def handle_batch(consumer: str, use_case: UseCase[M], batch: list[ConsumedRecord[M]],
                       breaker: Breaker | None = None) -> None:
    """Run `use_case` on the batch off the event loop; never let one record stall it.

    A transient failure (PostgreSQL or Kafka unreachable, serialization failure) is
    retried with backoff, then propagates: the batch is nacked and comes again, no record
    is blamed. Any other failure is a record's: the batch is retried record by record, and
    a record that still fails (a data error, an id over an index's limit, a bug its
    content triggers, or an unknown database error after a few tries) is dead-lettered
    with the error as its reason, so consumption goes on — unless `breaker` trips on too
    many in a row (`SystemicFailure`: the batch is not acknowledged).
    """
    breaker = breaker or Breaker()
    try:
        await _run(use_case, consumer, batch)
        breaker.handled()
    except Exception as exc:
        if classify(exc) in (Failure.TRANSIENT, Failure.CONFLICT):
            raise
        log.warning("batch failed, retrying record by record", consumer=consumer,
                    error=type(exc).__name__)
        for record in batch:
            try:
                await _run(use_case, consumer, [record], unknown_attempts=UNKNOWN_ATTEMPTS)
                breaker.handled()
            except Exception as exc:
                if classify(exc) in (Failure.TRANSIENT, Failure.CONFLICT):
                    raise
                breaker.unprocessable(consumer, exc)
                reason = f"unprocessable: {type(exc).__name__}: {exc}"[:2000]
                await _dead_letter(use_case, consumer, record, reason)


async def _dead_letter(use_case: UseCase[M], consumer: str, record: ConsumedRecord[M],
                       reason: str) -> None:
    """Dead-letter `record`; if even its row cannot be written (headers PostgreSQL
    refuses), write it without its headers, saying so: never stall on it."""
    refused = replace(record, message=None, error=reason.replace("\x00", "\\x00"))
    try:
        await _run(use_case, consumer, [refused])
    except Exception as exc:
        if classify(exc) in (Failure.TRANSIENT, Failure.CONFLICT):
            raise
        await _run(use_case, consumer, [replace(
            refused, headers=(), error=f"{refused.error} (headers dropped: {type(exc).__name__})")])


async def _run(use_case: UseCase[M], consumer: str, batch: list[ConsumedRecord[M]],
               unknown_attempts: int = 1) -> None:
    """The use case in a worker thread. A conflict with a concurrent writer and a transient
    failure are retried with backoff (from 10 ms) for up to `TRANSIENT_SECONDS`, an
    unknown database error `unknown_attempts` times in all; then the error propagates."""
    def retryable(exc: Exception) -> bool:
        kind = classify(exc)
        if kind is Failure.UNKNOWN:
            unknown[0] += 1
            return unknown[0] < unknown_attempts
        if kind is Failure.TRANSIENT:
            throttled.warning("transient failure, retrying", consumer=consumer,
                              error=f"{type(exc).__name__}: {exc}"[:300])
        return kind in (Failure.CONFLICT, Failure.TRANSIENT)

    unknown = [0]
    async for attempt in stamina.retry_context(on=retryable, attempts=None,
                                               timeout=TRANSIENT_SECONDS,
                                               wait_initial=0.01, wait_max=2.0):
        with attempt:
            uow = await asyncio.to_thread(use_case, consumer, batch)
    for d in uow.effects.dead_letters:
        log.warning("dead-lettered", consumer=consumer, topic=d.topic,
                    partition=d.partition, offset=d.offset, reason=d.reason)


def _undecoded(msg: Any) -> None:
    return None  # bodies are parsed in the handler, record by record


async def _parsed_leniently(records: tuple[Any, ...],
                            original: Callable[[tuple[Any, ...]], Awaitable[Any]]) -> Any:
    """FastStream's batch parser decodes every header value as UTF-8: a value that is null
    or not UTF-8 (both legal in Kafka) failed the whole batch, which was nacked and came
    again for ever, stalling the partition. It parses copies with printable headers; the
    handler still gets the original records (`raw_message`) and judges each itself."""
    parsed = await original(tuple(replace(r, headers=[
        (k, (v or b"").decode(errors="replace").encode()) for k, v in r.headers or ()])
        for r in records))
    parsed.raw_message = records
    return parsed


def register(broker: KafkaBroker, settings: Settings, app: Callable[[], DripApplication],
             breaker: Breaker, clock: Clock | None = None) -> None:
    """Attach the upstream and step-due subscribers to `broker`; `app()` gives the
    application when a batch arrives (the AsyncAPI document registers them too, and
    never starts its broker). Step-due lateness is measured on `clock` (the services'
    clock: simulated in a replay; default the wall clock)."""
    topics = Topics(settings.topic_prefix)
    common: dict[str, Any] = dict(
        batch=True, max_records=settings.batch_size, batch_timeout_ms=20,
        max_partition_fetch_bytes=8 << 20, auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR, decoder=_undecoded, parser=_parsed_leniently)
    upstream_group, step_group = settings.upstream_group, settings.step_due_group

    @broker.subscriber(*topics.upstream, group_id=upstream_group,
                       description="Upstream events (§9): appointments, patients, replies. "
                                   "CloudEvents 1.0 Kafka protocol binding, structured mode "
                                   "(application/cloudevents+json) or binary mode (ce_* "
                                   "headers, data as the value); the clinic is the extension "
                                   "`clinicid`; key = patient id",
                       **common)
    async def on_upstream(body: SkipValidation[list[UpstreamEvent]], msg: KafkaMessage) -> None:
        await handle_batch(upstream_group, app().handle_upstream,
                           consumed(msg.raw_message, parse_upstream), breaker)  # type: ignore[arg-type]

    receipts_group = settings.receipts_group

    @broker.subscriber(topics.receipts, group_id=receipts_group, title=topics.receipts,
                       description="Delivery receipts from the channel gateways (§6)", **common)
    async def on_receipts(body: SkipValidation[list[DeliveryReceiptV1]], msg: KafkaMessage) -> None:
        await handle_batch(receipts_group, app().handle_receipts,
                           consumed(msg.raw_message, parse_receipt), breaker)  # type: ignore[arg-type]

    @broker.subscriber(topics.step_due, group_id=step_group, title=topics.step_due,
                       description="drip's timers: step.due v1", **common)
    async def on_step_due(body: SkipValidation[list[StepDueV1]], msg: KafkaMessage) -> None:
        await handle_batch(step_group, observed(app().handle_step_due, clock),
                           consumed(msg.raw_message, parse_step_due), breaker)  # type: ignore[arg-type]
