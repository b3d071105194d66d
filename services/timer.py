"""The timer service: publishes `step.due` when a durable timer falls due (§2).

Timers live in PostgreSQL (`due_timers`, written with the events that schedule them).
Each round claims the timers due at or before `clock.now()`, publishes them to Kafka
(acks=all) and marks them fired in the same transaction: a crash before the commit
republishes, and the step-due handler ignores a step that is no longer pending.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import structlog

from contracts.timers import StepDueV1
from projections import timers
from services.clock import Clock
from services.publisher import BulkPublisher, Record

log = structlog.get_logger("drip.timer")
JSON = {"content-type": "application/json"}


class TimerService:
    """`fire_due()` runs one round; `run(stop)` loops until `stop` is set."""

    def __init__(self, database_url: str, publisher: BulkPublisher, topic: str, clock: Clock,
                 batch: int = 5000, idle_seconds: float = 0.05) -> None:
        self.database_url, self.publisher, self.topic = database_url, publisher, topic
        self.clock, self.batch, self.idle_seconds = clock, batch, idle_seconds
        self.fired = 0
        self._conn: psycopg.Connection | None = None

    async def fire_due(self) -> int:
        """Publish every timer due now (up to `batch`); returns how many were fired."""
        if self._conn is None or self._conn.closed:
            self._conn = await asyncio.to_thread(psycopg.connect, self.database_url)
        conn, now = self._conn, self.clock.now()
        due, records = await asyncio.to_thread(self._claim, conn, now)
        try:
            await self.publisher.publish_many(self.topic, records)
        except BaseException:
            await asyncio.to_thread(conn.rollback)
            raise
        await asyncio.to_thread(self._mark_fired, conn, due)
        self.fired += len(due)
        return len(due)

    def _claim(self, conn: psycopg.Connection, now: datetime) -> tuple[list[timers.Timer],
                                                                        list[Record]]:
        """Lock the due timers (the transaction stays open) and build their records."""
        with conn.cursor() as cur:
            due = timers.claim_due(cur, now, self.batch)
        return due, [self._record(t) for t in due]

    @staticmethod
    def _mark_fired(conn: psycopg.Connection, due: list[timers.Timer]) -> None:
        with conn.cursor() as cur:
            timers.mark_fired(cur, due, datetime.now(UTC))
        conn.commit()

    @staticmethod
    def _record(t: timers.Timer) -> Record:
        message = StepDueV1(enrollment_id=t.enrollment_id, clinic_id=t.clinic_id,
                            patient_id=t.patient_id, step_index=t.step_index,
                            due_at=t.due_at)
        return t.patient_id.encode(), message.model_dump_json().encode(), JSON

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                fired = await self.fire_due()
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("timer round failed, retrying", error=str(exc))
                fired = 0
                await asyncio.sleep(1)
            if not fired:
                await self.clock.wait_beyond(self.clock.now(), self.idle_seconds)
