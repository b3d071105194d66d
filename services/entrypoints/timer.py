"""The timer service: publishes `step.due` when a durable timer falls due (§2).

Timers live in PostgreSQL (`due_timers`, written with the events that schedule them).
Each round claims the timers due at or before `clock.now()`, publishes them to Kafka
(acks=all) and marks them fired in the same transaction: a crash before the commit
republishes, and the step-due handler ignores a step that is no longer pending.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from contracts.timers import StepDueV1
from projections import timers
from services.adapters.clock import Clock
from services.adapters.publisher import Record
from services.entrypoints.relays import JSON, Relay


class TimerService(Relay[list[timers.Timer]]):
    """`relay_once()` fires one round (up to `page` timers); `run()` loops until cancelled,
    idling until the next due time or a NOTIFY on `timers.CHANNEL`."""

    name = "timer"

    def __init__(self, clock: Clock, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    @property
    def fired(self) -> int:
        return self.relayed

    def claim(self, cur: psycopg.Cursor[Any]) -> tuple[list[timers.Timer], list[Record]]:
        due = timers.claim_due(cur, self.clock.now(), self.page)
        return due, [_record(t) for t in due]

    def done(self, cur: psycopg.Cursor[Any], claimed: list[timers.Timer]) -> None:
        timers.mark_fired(cur, claimed, datetime.now(UTC))

    async def idle(self) -> None:
        """Sleep until the next timer is due, a nearer one is written (NOTIFY), the
        simulated clock moves, or `idle_seconds` pass, whichever comes first."""
        due = await asyncio.to_thread(self._next_due)
        until = due or self.clock.now() + timedelta(seconds=self.idle_seconds)
        waits = [asyncio.ensure_future(self.clock.sleep_until(until, self.idle_seconds))]
        if self.listener is not None:
            waits.append(asyncio.ensure_future(self.listener.wait(self.idle_seconds)))
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _next_due(self) -> datetime | None:
        with self.pool.connection() as conn, conn.cursor() as cur:
            return timers.next_due(cur)


def _record(t: timers.Timer) -> Record:
    message = StepDueV1(enrollment_id=t.enrollment_id, clinic_id=t.clinic_id,
                        patient_id=t.patient_id, step_index=t.step_index, due_at=t.due_at,
                        held_until=t.held_until)
    return t.patient_id.encode(), message.model_dump_json().encode(), JSON
