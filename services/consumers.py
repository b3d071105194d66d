"""FastStream Kafka subscribers: upstream events and `step.due` timers.

Each subscriber takes batches, parses every record itself (a malformed one is
dead-lettered once instead of being redelivered forever), hands the batch to one use
case, and acknowledges only after the PostgreSQL commit (`AckPolicy.NACK_ON_ERROR`:
an infrastructure failure rewinds and retries). Positions kept in PostgreSQL make a
redelivery a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
import structlog
from aiokafka.errors import KafkaError
from eventsourcing.persistence import IntegrityError, PersistenceError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from contracts.envelope import InvalidMessage, parse_envelope
from contracts.timers import StepDueV1
from contracts.topics import UPSTREAM_SCHEMAS, Topics
from projections.dead_letters import DeadLetter
from services.application import DripApplication, Inbound
from services.dead_letters import to_dead_letters
from services.settings import Settings

log = structlog.get_logger("drip.consumers")
CONFLICT_RETRIES = 8
UseCase = Callable[[str, Sequence[Inbound]], Any]


def parse_upstream(raw: bytes) -> Any:
    return parse_envelope(raw, UPSTREAM_SCHEMAS)


def parse_step_due(raw: bytes) -> StepDueV1:
    try:
        return StepDueV1.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid step.due: {exc.errors()[0]['msg']}") from None


def to_inbound(records: Sequence[Any], parse: Callable[[bytes], Any]) -> list[Inbound]:
    out = []
    for r in records:
        try:
            out.append(Inbound(r.topic, r.partition, r.offset, r.key, r.value,
                               message=parse(r.value or b"")))
        except InvalidMessage as exc:
            out.append(Inbound(r.topic, r.partition, r.offset, r.key, r.value, error=exc.reason))
    return out


def is_infrastructure(exc: BaseException) -> bool:
    """Failures to retry (not acknowledge) rather than blame on a record (STYLE §8)."""
    return isinstance(exc, PersistenceError | psycopg.Error | OSError | KafkaError)


async def handle_batch(broker: KafkaBroker, topics: Topics, consumer: str,
                       use_case: UseCase, batch: list[Inbound]) -> None:
    """Run `use_case` on the batch off the event loop, then dead-letter what it refused.

    An infrastructure failure propagates (the batch is nacked and redelivered). Any other
    failure is a poison record: the batch is retried record by record and the record
    that still fails is dead-lettered with the error as its reason, so consumption goes on.
    """
    try:
        letters = await _run(use_case, consumer, batch)
    except Exception as exc:
        if is_infrastructure(exc):
            raise
        log.warning("batch failed, retrying record by record", consumer=consumer,
                    error=type(exc).__name__)
        letters = []
        for record in batch:
            try:
                letters += await _run(use_case, consumer, [record])
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                reason = f"unprocessable: {type(exc).__name__}: {exc}"
                letters += await _run(use_case, consumer, [replace(record, message=None,
                                                                   error=reason)])
    for d in letters:
        log.warning("dead-lettered", consumer=consumer, topic=d.topic,
                    partition=d.partition, offset=d.offset, reason=d.reason)
    await to_dead_letters(broker, topics.dead_letters, letters)


async def _run(use_case: UseCase, consumer: str, batch: list[Inbound]) -> list[DeadLetter]:
    """The use case in a worker thread; retried when a concurrent writer won the race."""
    for attempt in range(CONFLICT_RETRIES):
        try:
            uow = await asyncio.to_thread(use_case, consumer, batch)
            return uow.effects.dead_letters
        except IntegrityError:
            if attempt == CONFLICT_RETRIES - 1:
                raise  # a persistence error: nacked and redelivered, never dead-lettered
            log.info("batch conflicted, retrying", consumer=consumer, attempt=attempt)
            await asyncio.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")


def _raw(msg: Any) -> Any:
    return None  # bodies are parsed in the handler, record by record


def register(broker: KafkaBroker, app: DripApplication, settings: Settings) -> None:
    """Attach the upstream and step-due subscribers to `broker`."""
    topics = Topics(settings.topic_prefix)
    common: dict[str, Any] = dict(
        batch=True, max_records=settings.batch_size, batch_timeout_ms=20,
        max_partition_fetch_bytes=8 << 20, auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR, decoder=_raw)
    upstream_group, step_group = settings.upstream_group, settings.step_due_group

    @broker.subscriber(*topics.upstream, group_id=upstream_group, **common)
    async def on_upstream(body: Any, msg: KafkaMessage) -> None:
        batch = to_inbound(msg.raw_message, parse_upstream)
        await handle_batch(broker, topics, upstream_group, app.handle_upstream, batch)

    @broker.subscriber(topics.step_due, group_id=step_group, **common)
    async def on_step_due(body: Any, msg: KafkaMessage) -> None:
        batch = to_inbound(msg.raw_message, parse_step_due)
        await handle_batch(broker, topics, step_group, app.handle_step_due, batch)
