"""The timer service: publishes `step.due` when a durable timer falls due (§2).

Timers live in PostgreSQL (`due_timers`, written with the events that schedule them).
Each round claims the timers due at or before `clock.now()`, publishes them to Kafka
(acks=all) and marks them fired in the same transaction: a crash before the commit
republishes, and the step-due handler ignores a step that is no longer pending.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog

from contracts.timers import StepDueV1
from projections import timers
from services.adapters.clock import Clock
from services.adapters.publisher import Record
from services.entrypoints.relays import JSON, Relay

log = structlog.get_logger("drip.timer")


class TimerService(Relay[list[timers.Timer]]):
    """`relay_once()` fires one round (up to `page` timers); `run()` loops until cancelled."""

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

    async def run(self) -> None:
        while True:
            try:
                fired = await self.relay_once()
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("timer round failed, retrying", error=str(exc))
                fired = 0
            if not fired:
                await self.clock.wait_beyond(self.clock.now(), self.idle_seconds)


def _record(t: timers.Timer) -> Record:
    message = StepDueV1(enrollment_id=t.enrollment_id, clinic_id=t.clinic_id,
                        patient_id=t.patient_id, step_index=t.step_index, due_at=t.due_at)
    return t.patient_id.encode(), message.model_dump_json().encode(), JSON
