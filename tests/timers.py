"""One round of the timer service, by hand: the steps due by a time, claimed from the
`due_timers` table and handled by the step-due use case as records of a Kafka topic."""

from __future__ import annotations

import itertools
from datetime import datetime

from contracts.timers import StepDueV1
from projections import timers
from services.application.records import ConsumedRecord
from services.bootstrap import Services

_offsets = itertools.count()  # increasing across calls: no round is taken for a redelivery


def fire_due(services: Services, now: datetime, consumer: str = "steps") -> list[timers.Timer]:
    """Claim the timers due by `now` and fire them; returns the claimed timers."""
    with services.pool.connection() as conn, conn.cursor() as cur:
        claimed = timers.claim_due(cur, now, 100)
    records = [ConsumedRecord("s", 0, next(_offsets), None, None, message=StepDueV1(
        enrollment_id=t.enrollment_id, clinic_id=t.clinic_id, patient_id=t.patient_id,
        step_index=t.step_index, due_at=t.due_at, held_until=t.held_until))
        for t in claimed]
    if records:
        services.app.handle_step_due(consumer, records)
    return claimed
