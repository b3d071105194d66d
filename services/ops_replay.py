"""Re-consuming an upstream topic (§8 "re-consume an upstream topic from an offset or
timestamp without duplicating effects"): `drip topics replay TOPIC --from-offset N |
--from-time T`, e.g. once a fix to a rule has shipped and past records should count again.

How a replay avoids duplicates. The records go through the live consumer's own use case
(`DripApplication.handle_upstream`, by way of `handle_batch`: same batching, retries and
dead-lettering) but under a consumer name of its own, `<upstream group>.replay`: they are
re-applied, not skipped as already handled, and the live group's positions are untouched.
What keeps a re-applied record from acting twice is the domain's idempotency:
- an enrollment's id is uuid5(campaign, subject), so a trigger seen again finds the
  enrollment it started instead of starting another (§3);
- an enrollment that ended ignores stop rules, and a booking no later than an enrollment's
  start does not stop it (§4); a patient's opt-out is recorded once per (channel, time);
- an appointment booked again for the same time, and details that are the ones known,
  change nothing.
Re-applying is not idempotent everywhere yet: tests/integration/test_topics_replay.py
names, as strict xfails, what a replay records again (a reply or a single-channel opt-out
on an enrollment still active, a reply older than an enrollment stopping it, superseded
patient details and appointment times re-applied). And a replay applies the campaigns as
they are now: one activated since enrolls the patients the old triggers name.

The replay's positions are rewound (compare-and-set) to just before its first record, then
advance with each batch in that batch's transaction, like the live consumer's; run one
replay of a topic at a time (a second one rewinds the same positions). A record refused
again is dead-lettered under the replay's name, so once however many replays take it. The
replay stops at the end offsets it found when it started; `--from-time` is the records'
Kafka timestamp (when they were written to Kafka), not the events' own `time`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psycopg_pool import ConnectionPool

from contracts.topics import Topics
from projections import consumer_positions
from projections.consumer_positions import Advance
from services.adapters.kafka_security import client_options
from services.application.app import DripApplication
from services.application.records import ConsumedRecord
from services.application.unit_of_work import UnitOfWork
from services.entrypoints.subscribers import Breaker, consumed, handle_batch, parse_upstream
from services.settings import Settings

Progress = Callable[[int, int], None]
"""`progress(done, total)`: records handled so far, of those the replay will handle."""


@dataclass
class ReplayResult:
    """What a replay did: `records` re-applied as `consumer`, the `domain_events` they
    recorded (0: nothing changed), and how many of them were `refused` (dead-lettered
    under the replay's name, the first time a replay refused them)."""

    topic: str
    consumer: str
    records: int = 0
    domain_events: int = 0
    refused: int = 0


def replay_consumer(settings: Settings) -> str:
    """The consumer name replays apply records under (their positions, their dead letters)."""
    return f"{settings.upstream_group}.replay"


def upstream_topic(settings: Settings, name: str) -> str:
    """The upstream topic `name` (`appointments`, or its full name `drip.appointments.v1`).
    Raises `ValueError` naming the topics a replay takes."""
    topics = Topics(settings.topic_prefix)
    short = {t.removeprefix(f"{topics.prefix}.").rsplit(".", 1)[0]: t for t in topics.upstream}
    found = short.get(name) or (name if name in topics.upstream else None)
    if found is None:
        raise ValueError(f"{name!r} is not an upstream topic; one of: "
                         f"{', '.join([*short, *topics.upstream])}")
    return found


async def replay_topic(settings: Settings, app: DripApplication, pool: ConnectionPool,
                       topic: str, *, from_offset: int | None = None,
                       from_time: datetime | None = None,
                       progress: Progress | None = None) -> ReplayResult:
    """Re-apply `topic`'s records from `from_offset` (in every partition) or from the first
    written at or after `from_time`, up to the end offsets of now. Raises `ValueError` (an
    unknown topic, neither or both starting points), aiokafka's `KafkaError`, and what
    `handle_batch` raises (an infrastructure failure that outlasted its retries)."""
    if (from_offset is None) == (from_time is None):
        raise ValueError("give a starting offset or a starting time, not both")
    result = ReplayResult(upstream_topic(settings, topic), replay_consumer(settings))
    partitions = await _partitions(settings, result.topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20,
                                **client_options(settings))
    await consumer.start()
    try:
        start, end = await _bounds(consumer, partitions, from_offset, from_time)
        _rewind(pool, result, start)
        await _consume(consumer, app, result, start, end, progress or (lambda d, t: None),
                       settings.batch_size)
    finally:
        await consumer.stop()
    return result


async def _partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                **client_options(settings))
    await admin.start()
    try:
        [found] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if found["error_code"] or not found["partitions"]:
        raise ValueError(f"topic {topic!r} does not exist")
    return sorted(TopicPartition(topic, p["partition"]) for p in found["partitions"])


async def _bounds(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                  from_offset: int | None, from_time: datetime | None,
                  ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The first offset to replay and the end offset, per partition."""
    consumer.assign(tps)
    first, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    if from_offset is not None:
        return {tp: min(max(from_offset, first[tp]), end[tp]) for tp in tps}, end
    assert from_time is not None
    at = from_time if from_time.tzinfo else from_time.replace(tzinfo=UTC)
    found = await consumer.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in tps})
    return {tp: end[tp] if found[tp] is None else found[tp].offset for tp in tps}, end


def _rewind(pool: ConnectionPool, result: ReplayResult, start: dict[TopicPartition, int]) -> None:
    """Set the replay consumer's positions to just before `start`, so nothing is skipped."""
    with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        known = consumer_positions.all_positions(cur, result.consumer)
        consumer_positions.write(cur, [
            Advance(result.consumer, tp.topic, tp.partition, known.get((tp.topic, tp.partition)),
                    offset - 1) for tp, offset in sorted(start.items())])


async def _consume(consumer: AIOKafkaConsumer, app: DripApplication, result: ReplayResult,
                   start: dict[TopicPartition, int], end: dict[TopicPartition, int],
                   progress: Progress, batch_size: int) -> None:
    total = sum(end[tp] - offset for tp, offset in start.items())
    left = {tp for tp, offset in start.items() if offset < end[tp]}
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    consumer.pause(*(set(start) - left))
    breaker = Breaker()

    def use_case(name: str, batch: Sequence[ConsumedRecord[Any]]) -> UnitOfWork:
        uow = app.handle_upstream(name, batch)
        result.domain_events += uow.recorded
        result.refused += len(uow.effects.dead_letters)
        return uow

    progress(0, total)
    while left:
        fetched = await consumer.getmany(*left, timeout_ms=1000, max_records=batch_size)
        records = [r for tp, found in fetched.items() for r in found if r.offset < end[tp]]
        if records:
            await handle_batch(result.consumer, use_case, consumed(records, parse_upstream),
                               breaker)
            result.records += len(records)
            progress(result.records, total)
        for tp in list(left):
            if await consumer.position(tp) >= end[tp]:
                left.discard(tp)
                consumer.pause(tp)
