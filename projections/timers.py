"""Durable timers: the one pending step of each active enrollment and its due time (§2).

An inline read model: rows are written in the same transaction as the `StepScheduled`
events they mirror, so the timer service never misses nor invents a step. The timer
service claims rows due at or before its clock, publishes `step.due`, and marks them
fired; the step-due handler's transaction replaces or deletes the row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import Cursor

from projections.sql import add_column, columns
from projections.sql import rows as _rows

DDL = """
CREATE TABLE IF NOT EXISTS due_timers (
    enrollment_id uuid        PRIMARY KEY,
    clinic_id     text        NOT NULL,
    patient_id    text        NOT NULL,
    step_index    int         NOT NULL,
    due_at        timestamptz NOT NULL,
    fired_at      timestamptz
);
CREATE INDEX IF NOT EXISTS due_timers_due ON due_timers (due_at) WHERE fired_at IS NULL;
""" + add_column("due_timers", "campaign_id", "uuid")
# due_timers.campaign_id: the timer service holds the timers of paused campaigns (§2)
_FIRING = ("NOT EXISTS (SELECT 1 FROM campaign_states s WHERE s.campaign_id = t.campaign_id"
           " AND s.status = 'paused')")


CHANNEL = "drip_timers"
"""NOTIFY channel: written timers wake the timer service (one may be due sooner)."""


@dataclass(frozen=True)
class Timer:
    """Step `step_index` of `enrollment_id` falls due at `due_at` (UTC)."""

    enrollment_id: UUID
    clinic_id: str
    patient_id: str
    step_index: int
    due_at: datetime
    campaign_id: UUID | None = None
    held_until: datetime | None = None
    """Set when claimed: the step fell due while its campaign was paused; it goes now."""


def write(cur: Cursor, upserts: Iterable[Timer], deletes: Iterable[UUID]) -> None:
    """Set each enrollment's pending step; drop the timers of enrollments with none."""
    timers = list(upserts)
    if timers:
        cur.execute(
            "INSERT INTO due_timers (enrollment_id, clinic_id, patient_id, step_index, due_at,"
            " campaign_id) SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[],"
            " %s::timestamptz[], %s::uuid[])"
            " ON CONFLICT (enrollment_id) DO UPDATE SET step_index = EXCLUDED.step_index,"
            " due_at = EXCLUDED.due_at, fired_at = NULL",
            columns(timers, ("enrollment_id", "clinic_id", "patient_id", "step_index",
                             "due_at", "campaign_id")))
        cur.execute(f"NOTIFY {CHANNEL}")
    ids = list(deletes)
    if ids:
        cur.execute("DELETE FROM due_timers WHERE enrollment_id = ANY(%s)", (ids,))


def claim_due(cur: Cursor, now: datetime, limit: int) -> list[Timer]:
    """Unfired timers due at or before `now` (UTC), earliest first, locked for this claim;
    not those of paused campaigns. A timer due before its campaign's last resume comes
    with `held_until` = that resume (§2: held steps go on resume)."""
    cur.execute(
        "SELECT t.enrollment_id, t.clinic_id, t.patient_id, t.step_index, t.due_at,"
        " t.campaign_id, (SELECT s.resumed_at FROM campaign_states s"
        "  WHERE s.campaign_id = t.campaign_id AND t.due_at < s.resumed_at)"
        f" FROM due_timers t WHERE t.fired_at IS NULL AND t.due_at <= %s AND {_FIRING}"
        " ORDER BY t.due_at, t.enrollment_id LIMIT %s FOR UPDATE OF t SKIP LOCKED",
        (now, limit))
    return [Timer(*r) for r in _rows(cur)]


def mark_fired(cur: Cursor, timers: Iterable[Timer], at: datetime) -> None:
    """Mark these timers fired at `at`, unless their row moved on to another step."""
    fired = list(timers)
    if fired:
        cur.execute(
            "UPDATE due_timers t SET fired_at = %s FROM unnest(%s::uuid[], %s::int[],"
            " %s::timestamptz[]) AS f(enrollment_id, step_index, due_at)"
            " WHERE t.enrollment_id = f.enrollment_id AND t.step_index = f.step_index"
            " AND t.due_at = f.due_at",
            [at, *columns(fired, ("enrollment_id", "step_index", "due_at"))])


def next_due(cur: Cursor) -> datetime | None:
    """The earliest due time (UTC) of an unfired timer that may fire (its campaign is not
    paused), None when there is none."""
    cur.execute(f"SELECT min(t.due_at) FROM due_timers t WHERE t.fired_at IS NULL AND {_FIRING}")
    return _rows(cur)[0][0]


def count_due(cur: Cursor, until: datetime | None = None) -> int:
    """Timers (fired or not) whose step is still pending at or before `until` (all if None)."""
    if until is None:
        cur.execute("SELECT count(*) FROM due_timers")
    else:
        cur.execute("SELECT count(*) FROM due_timers WHERE due_at <= %s", (until,))
    return _rows(cur)[0][0]

