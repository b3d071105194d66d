"""Observability (§8): Prometheus metrics, and the health and readiness checks.

What drip knows durably lives in PostgreSQL and Kafka, so the metrics are read from there
at scrape time by one collector (any process serving /metrics tells the same truth, and
nothing is lost when a process restarts): consumer lag, dead letters, how far each
event-log follower is behind, sends per channel and outcome. Only the lateness of fired
steps is measured in process, by the step-due subscriber. A scrape runs in a worker
thread and gives each source `timeout` seconds; a source that does not answer leaves its
metrics out and says so in `drip_dependency_up`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from psycopg import Cursor
from psycopg_pool import ConnectionPool

from contracts.timers import StepDueV1
from contracts.topics import Topics
from projections import consumer_positions, dead_letters, gateway_sends, log_positions
from projections.analytics import EVENTS_TABLE
from services.adapters.clock import Clock, WallClock
from services.adapters.kafka_security import client_options
from services.adapters.log_throttle import ThrottledLogger
from services.application.records import ConsumedRecord
from services.application.unit_of_work import UnitOfWork
from services.settings import Settings

TIMEOUT = 2.0
LATENESS = Histogram(
    "drip_step_due_lateness_seconds",
    "How long after its due time (held_until for a step held by a pause) a due step was "
    "fired by the step-due consumer, on the services' wall clock (§2 timers)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400))
StepDueUseCase = Callable[[str, Sequence[ConsumedRecord[StepDueV1]]], UnitOfWork]
log = ThrottledLogger(structlog.get_logger("drip.metrics"), every_seconds=60.0)


def observed(use_case: StepDueUseCase, clock: Clock | None = None) -> StepDueUseCase:
    """`use_case` (the step-due handler) observing `drip_step_due_lateness_seconds` for
    each step it fired, on `clock` (default: the wall clock, as `drip serve` runs): not
    for a redelivered record (at or below the consumer's recorded position) nor a refused
    one (dead-lettered)."""
    clock = clock or WallClock()

    def handle(consumer: str, batch: Sequence[ConsumedRecord[StepDueV1]]) -> UnitOfWork:
        uow = use_case(consumer, batch)
        at = clock.now()
        known = {(a.topic, a.partition): a.expected for a in uow.effects.advances}
        refused = {(d.topic, d.partition, d.offset) for d in uow.effects.dead_letters}
        for r in batch:
            if r.message is None or (r.topic, r.partition) not in known:
                continue
            expected = known[(r.topic, r.partition)]
            fresh = expected is None or r.offset > expected
            if fresh and (r.topic, r.partition, r.offset) not in refused:
                due = r.message.held_until or r.message.due_at
                LATENESS.observe(max(0.0, (at - due).total_seconds()))
        return uow
    return handle


@dataclass
class DatabaseState:
    """What a scrape reads from PostgreSQL."""

    positions: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    dead_letters: list[tuple[str, str, int]] = field(default_factory=list)
    head: int = 0
    followers: list[tuple[str, int]] = field(default_factory=list)
    sends: dict[str, dict[str, int]] = field(default_factory=dict)
    receipts: list[tuple[str, str, int]] = field(default_factory=list)


def read_database(cur: Cursor[Any], groups: Iterable[str]) -> DatabaseState:
    state = DatabaseState(positions={g: consumer_positions.all_positions(cur, g) for g in groups})
    state.dead_letters = dead_letters.counts(cur)
    state.head, state.followers = log_positions.all_positions(cur, EVENTS_TABLE)
    state.sends = gateway_sends.counts(cur)
    state.receipts = gateway_sends.receipt_counts(cur)
    return state


async def partitions(settings: Settings, topics: Iterable[str]) -> list[TopicPartition]:
    """The partitions of these topics that exist. Asks for every topic's metadata: a
    request naming a missing topic would let a broker that auto-creates topics create it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                **client_options(settings))
    try:
        await admin.start()
        described = await admin.describe_topics()
    finally:
        await admin.close()
    wanted = set(topics)
    return sorted(TopicPartition(t["topic"], p["partition"]) for t in described
                  if t["topic"] in wanted and not t["error_code"] for p in t["partitions"])


async def offsets(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, tuple[int, int]]:
    """(beginning, end) offsets of every partition of these topics (those that exist)."""
    tps = await partitions(settings, topics)
    if not tps:
        return {}
    # its first offset request finds no metadata for these topics and retries after
    # `retry_backoff_ms` (100 ms by default), once the metadata came
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, retry_backoff_ms=10,
                                **client_options(settings))
    try:
        await consumer.start()
        # let the consumer's own task start: aiokafka's stop() raises CancelledError when
        # it cancels that task before it ever ran
        await asyncio.sleep(0)
        begin, end = await asyncio.gather(consumer.beginning_offsets(tps),
                                          consumer.end_offsets(tps))
    finally:
        await consumer.stop()
    return {tp: (begin[tp], end[tp]) for tp in tps}


def _gauge(name: str, doc: str, labels: Sequence[str],
           samples: Iterable[tuple[Sequence[str], float]]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        gauge.add_metric([str(v) for v in values], value)
    return gauge


class DripCollector(Collector):
    """Reads PostgreSQL (`pool`) and Kafka at each scrape; call `collect` off the event
    loop (it runs its own, for the Kafka client)."""

    def __init__(self, settings: Settings, pool: ConnectionPool, timeout: float = TIMEOUT) -> None:
        self.settings, self.pool, self.timeout = settings, pool, timeout
        topics = Topics(settings.topic_prefix)
        self.groups = {settings.upstream_group: topics.upstream,
                       settings.step_due_group: (topics.step_due,),
                       settings.receipts_group: (topics.receipts,)}

    def collect(self) -> Iterable[Metric]:
        database, kafka = asyncio.run(self._read())
        up = {}
        for source, found in (("postgresql", database), ("kafka", kafka)):
            up[source] = not isinstance(found, BaseException)
            if isinstance(found, BaseException):
                log.warning("metrics source unavailable", source=source,
                            error=f"{type(found).__name__}: {found}"[:300])
        yield _gauge("drip_dependency_up", "1 when the source answered this scrape in time",
                     ["dependency"], [((name,), float(ok)) for name, ok in up.items()])
        if isinstance(database, DatabaseState):
            yield from self._database_metrics(database)
            if isinstance(kafka, dict):
                yield self._lag(database, kafka)

    async def _read(self) -> tuple[DatabaseState | BaseException, Any]:
        wanted = [t for topics in self.groups.values() for t in topics]
        database, kafka = await asyncio.gather(
            asyncio.wait_for(asyncio.to_thread(self._query), self.timeout + 1),
            asyncio.wait_for(offsets(self.settings, wanted), self.timeout),
            return_exceptions=True)
        return database, kafka

    def _query(self) -> DatabaseState:
        with self.pool.connection(timeout=self.timeout) as conn, conn.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = {int(self.timeout * 1000)}")
            return read_database(cur, self.groups)

    def _lag(self, database: DatabaseState,
             ends: dict[TopicPartition, tuple[int, int]]) -> GaugeMetricFamily:
        samples = []
        for group, topics in self.groups.items():
            positions = database.positions.get(group, {})
            for tp, (begin, end) in sorted(ends.items()):
                if tp.topic in topics:
                    position = positions.get((tp.topic, tp.partition), -1)
                    samples.append(((group, tp.topic, tp.partition),
                                    max(0, end - max(begin, position + 1))))
        return _gauge("drip_consumer_lag", "Records on the partition the consumer group has "
                      "not handled yet: end offset - (recorded position + 1)",
                      ["group", "topic", "partition"], samples)

    @staticmethod
    def _database_metrics(s: DatabaseState) -> Iterable[Metric]:
        yield _gauge("drip_dead_letters", "Records refused by a consumer (§8 dead letters)",
                     ["consumer", "topic"], [((c, t), n) for c, t, n in s.dead_letters])
        yield _gauge("drip_projection_behind", "Events of the log a follower (projector, "
                     "dispatcher) has not handled: max notification id - its position",
                     ["name"], [((name, ), max(0, s.head - p)) for name, p in s.followers])
        yield _gauge("drip_dispatches", "Dispatch requests claimed by the gateways, by channel "
                     "and ledger state (sending, sent, failed)", ["channel", "outcome"],
                     [((c, o), n) for c, states in s.sends.items() for o, n in states.items()])
        yield _gauge("drip_dispatch_receipts", "Delivery receipts written by the gateways, by "
                     "channel and outcome (delivered, failed, bounced, opened, clicked)",
                     ["channel", "outcome"], [((c, o), n) for c, o, n in s.receipts])


def router(settings: Settings, pool: ConnectionPool, timeout: float = TIMEOUT) -> APIRouter:
    """`GET /metrics` (Prometheus text format), `GET /health` (the process answers) and
    `GET /ready` (PostgreSQL and Kafka answer within `timeout` seconds; 503 and why not)."""
    registry = CollectorRegistry()
    registry.register(DripCollector(settings, pool, timeout))
    api = APIRouter(tags=["operations"])

    @api.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body = await asyncio.to_thread(lambda: generate_latest(REGISTRY) + generate_latest(registry))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready() -> JSONResponse:
        found = await asyncio.gather(
            asyncio.wait_for(asyncio.to_thread(_ping_database, pool, timeout), timeout + 1),
            asyncio.wait_for(partitions(settings, ()), timeout),  # the cluster's metadata
            return_exceptions=True)
        checks = {name: "ok" if not isinstance(r, BaseException)
                  else f"{type(r).__name__}: {r}"[:300]
                  for name, r in zip(("postgresql", "kafka"), found, strict=True)}
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "unavailable", **checks},
                            status_code=200 if ok else 503)

    return api


def _ping_database(pool: ConnectionPool, timeout: float) -> None:
    with pool.connection(timeout=timeout) as conn:
        conn.execute("SELECT 1")

