"""Which enrollments of a patient are active: the index stop rules look up (§4).

Inline read model, written with the events that start and end enrollments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import Cursor

from projections.sql import columns
from projections.sql import rows as _rows

DDL = """
CREATE TABLE IF NOT EXISTS active_enrollments (
    enrollment_id uuid        PRIMARY KEY,
    clinic_id     text        NOT NULL,
    patient_id    text        NOT NULL,
    campaign_id   uuid        NOT NULL,
    started_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS active_enrollments_patient
    ON active_enrollments (clinic_id, patient_id);
"""


@dataclass(frozen=True)
class Active:
    enrollment_id: UUID
    clinic_id: str
    patient_id: str
    campaign_id: UUID
    started_at: datetime


def write(cur: Cursor, upserts: Iterable[Active], deletes: Iterable[UUID]) -> None:
    """Index the enrollments that are active; drop those that ended."""
    active = list(upserts)
    if active:
        cur.execute(
            "INSERT INTO active_enrollments SELECT * FROM unnest(%s::uuid[], %s::text[],"
            " %s::text[], %s::uuid[], %s::timestamptz[]) ON CONFLICT (enrollment_id) DO NOTHING",
            columns(active))
    ids = list(deletes)
    if ids:
        cur.execute("DELETE FROM active_enrollments WHERE enrollment_id = ANY(%s)", (ids,))


def of_patients(cur: Cursor, patients: Iterable[tuple[str, str]]) -> dict[tuple[str, str], set[UUID]]:
    """Active enrollment ids per (clinic_id, patient_id)."""
    pairs = sorted(set(patients))
    found: dict[tuple[str, str], set[UUID]] = {p: set() for p in pairs}
    if not pairs:
        return found
    cur.execute(
        "SELECT clinic_id, patient_id, enrollment_id FROM active_enrollments"
        " WHERE (clinic_id, patient_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([c for c, _ in pairs], [p for _, p in pairs]))
    for clinic_id, patient_id, enrollment_id in _rows(cur):
        found[(clinic_id, patient_id)].add(enrollment_id)
    return found


def of_campaign(cur: Cursor, campaign_id: UUID) -> list[UUID]:
    """The campaign's active enrollment ids, oldest first (a migration's worklist)."""
    cur.execute("SELECT enrollment_id FROM active_enrollments WHERE campaign_id = %s"
                " ORDER BY started_at, enrollment_id", (campaign_id,))
    return [r[0] for r in _rows(cur)]
