"""Followers of the event log: the stats projector and the dispatcher (outbox relay).

The event log is the outbox: a `MessageSent` event committed with the step's other
events becomes a `message.dispatch_requested` on Kafka, relayed at least once with an
idempotency key (enrollment:step:attempt) that gateways dedupe on (§6).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import structlog
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from contracts.messages import DispatchRequestedV1
from domain.enrollment import Enrollment
from projections import campaign_stats, runner
from services.application import DripApplication
from services.publisher import BulkPublisher, Record

log = structlog.get_logger("drip.followers")
JSON = {"content-type": "application/json"}


class Projector:
    """Keeps the campaign statistics read model caught up with the event log."""

    name = "campaign_stats"

    def __init__(self, app: DripApplication, database_url: str, page: int = 5000) -> None:
        self.app, self.database_url, self.page = app, database_url, page
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one connection: the loop and catch_up take turns

    def _read(self, after: int, limit: int) -> Sequence[Notification]:
        return self.app.notifications(after, limit)

    def _apply(self, cur: psycopg.Cursor, page: Sequence[Notification]) -> None:
        campaign_stats.apply(cur, [self.app.mapper.to_domain_event(n) for n in page])

    def step(self) -> int:
        """Apply one page; returns how many notifications it held (0 = caught up)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.database_url)
            return runner.follow_once(self._conn, self.name, self._read, self._apply, self.page)

    def catch_up(self) -> int:
        total = 0
        while n := self.step():
            total += n
        return total

    async def run(self, stop: asyncio.Event, idle_seconds: float = 0.05) -> None:
        while not stop.is_set():
            if not await asyncio.to_thread(self.step):
                await asyncio.sleep(idle_seconds)


class Dispatcher:
    """Relays `Enrollment.MessageSent` events to the dispatch-requests topic."""

    name = "dispatcher"
    topic_filter = (get_topic(Enrollment.MessageSent),)

    def __init__(self, app: DripApplication, publisher: BulkPublisher, topic: str,
                 database_url: str, page: int = 2000) -> None:
        self.app, self.publisher, self.topic = app, publisher, topic
        self.database_url, self.page = database_url, page
        self.relayed = 0
        self._conn: psycopg.Connection | None = None
        self._lock = asyncio.Lock()  # one connection: the loop and drain take turns

    def _claim(self) -> tuple[int, list[Record]]:
        """Lock the position, read the next page and build its records (off the loop)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url)
        with self._conn.cursor() as cur:  # the lock holds until _advance commits
            after = runner.lock_position(cur, self.name)
        page = self.app.notifications(after, self.page, self.topic_filter)
        return (page[-1].id if page else after), [self._record(n) for n in page]

    def _advance(self, position: int) -> None:
        assert self._conn is not None
        with self._conn.cursor() as cur:
            runner.set_position(cur, self.name, position)
        self._conn.commit()

    async def relay_once(self) -> int:
        """Publish the next page of sends; returns how many were relayed."""
        async with self._lock:
            position, records = await asyncio.to_thread(self._claim)
            try:
                await self.publisher.publish_many(self.topic, records)
            except BaseException:
                await asyncio.to_thread(self._conn.rollback)  # type: ignore[union-attr]
                raise
            await asyncio.to_thread(self._advance, position)
            self.relayed += len(records)
            return len(records)

    def relayed_total(self) -> int:
        """Sends relayed so far by any dispatcher process (read from PostgreSQL)."""
        with psycopg.connect(self.database_url) as conn, conn.cursor() as cur:
            return runner.followed(cur, self.name, self.app.recorder.events_table_name,
                                   self.topic_filter[0])

    def _record(self, n: Notification) -> Record:
        ev: Any = self.app.mapper.to_domain_event(n)
        request = DispatchRequestedV1(
            idempotency_key=ev.idempotency_key, enrollment_id=ev.originator_id,
            clinic_id=ev.clinic_id, patient_id=ev.patient_id, campaign_id=ev.campaign_id,
            step=ev.step, channel=ev.channel, template=ev.template, due_at=ev.at)
        return ev.patient_id.encode(), request.model_dump_json().encode(), JSON

    async def run(self, stop: asyncio.Event, idle_seconds: float = 0.05) -> None:
        while not stop.is_set():
            if not await self.relay_once():
                await asyncio.sleep(idle_seconds)
