"""Patients' details and contact points (§6): an inline read model, written with the
`Patient` events that change them. Gateways read contact points here, never from a
Kafka key; `invalid` lists the channels whose contact point a hard bounce refused.

`patients(clinic_id, patient_id, details jsonb, invalid text[])`
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from psycopg import Cursor

from projections.sql import rows

DDL = """
CREATE TABLE IF NOT EXISTS patients (
    clinic_id  text  NOT NULL,
    patient_id text  NOT NULL,
    details    jsonb NOT NULL,
    invalid    text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (clinic_id, patient_id)
);
"""


@dataclass(frozen=True)
class PatientRow:
    clinic_id: str
    patient_id: str
    details: dict[str, str]
    invalid: list[str] = field(default_factory=list)


def write(cur: Cursor, patients: Iterable[PatientRow]) -> None:
    """Upsert each patient's latest details and invalid channels."""
    found = list(patients)
    if found:
        cur.executemany(
            "INSERT INTO patients VALUES (%s, %s, %s, %s) ON CONFLICT (clinic_id, patient_id)"
            " DO UPDATE SET details = EXCLUDED.details, invalid = EXCLUDED.invalid",
            [(p.clinic_id, p.patient_id, json.dumps(p.details), p.invalid) for p in found])


def of(cur: Cursor, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PatientRow]:
    """The rows of these (clinic_id, patient_id) pairs that exist."""
    pairs = sorted(set(keys))
    if not pairs:
        return {}
    cur.execute("SELECT clinic_id, patient_id, details, invalid FROM patients WHERE"
                " (clinic_id, patient_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([c for c, _ in pairs], [p for _, p in pairs]))
    return {(c, p): PatientRow(c, p, d if isinstance(d, dict) else json.loads(d), list(i))
            for c, p, d, i in rows(cur)}
