"""The public no-show data set (../shared/data) as upstream events, mapped exactly as
issue 2 defines them.

Per row: `appointment.booked` at `ScheduledDay` (UTC as given) with `starts_at` = the
date of `AppointmentDay` at 10:00 America/Sao_Paulo, then `appointment.attended`
(No-show = "No") or `appointment.missed` (No-show = "Yes") at `starts_at + 1 h`.
Patient ids are the `PatientId` text exactly as written (five are in scientific notation).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

CLINIC_ID = "vitoria"
TIME_ZONE = "America/Sao_Paulo"
SOURCE = "urn:kaggle:joniarroba:noshowappointments"


@dataclass(frozen=True, order=True)
class UpstreamRecord:
    """One upstream event ready for Kafka; ordering = publication order (time first)."""

    time: datetime
    seq: int
    type: str
    key: bytes
    value: bytes


@lru_cache(maxsize=4096)
def starts_at(appointment_day: str, time_zone: str = TIME_ZONE) -> datetime:
    """10:00 local (in `time_zone`) on the date of `AppointmentDay`, in UTC."""
    day = date.fromisoformat(appointment_day[:10])
    return datetime.combine(day, time(10, 0), tzinfo=ZoneInfo(time_zone)).astimezone(UTC)


def _envelope(event_id: str, type_: str, at: datetime, patient_id: str,
              data: dict[str, str | None]) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": event_id, "source": SOURCE, "type": type_,
        "dataversion": 1, "time": _iso(at), "subject": patient_id, "clinicid": CLINIC_ID,
        "data": data}, separators=(",", ":")).encode()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def records(path: Path, limit: int | None = None) -> Iterator[UpstreamRecord]:
    """Two records per CSV row (booking, then attendance), in file order."""
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(islice(csv.DictReader(f), limit)):
            patient, appointment = row["PatientId"], row["AppointmentID"]
            booked_at = datetime.fromisoformat(row["ScheduledDay"].replace("Z", "+00:00"))
            start = starts_at(row["AppointmentDay"])
            key = patient.encode()
            yield UpstreamRecord(booked_at, 2 * i, "appointment.booked", key, _envelope(
                f"{appointment}:booked", "appointment.booked", booked_at, patient,
                {"appointment_id": appointment, "patient_id": patient,
                 "starts_at": _iso(start)}))
            outcome = "appointment.missed" if row["No-show"] == "Yes" else "appointment.attended"
            after = start + timedelta(hours=1)
            yield UpstreamRecord(after, 2 * i + 1, outcome, key, _envelope(
                f"{appointment}:{outcome.split('.')[1]}", outcome, after, patient,
                {"appointment_id": appointment, "patient_id": patient,
                 "starts_at": _iso(start)}))


def timeline(path: Path, limit: int | None = None) -> list[UpstreamRecord]:
    """All records sorted by (time, file position): the order upstream would publish."""
    return sorted(records(path, limit))


BOUNCING = "bounce.invalid"
"""The e-mail domain of the data set's synthetic patients whose mail bounces (the local
SMTP sink refuses it with 550, a hard bounce)."""


def contacts(path: Path, limit: int | None = None) -> list[UpstreamRecord]:
    """A `patient.updated` per patient of the first `limit` rows, one second before the
    first record, with synthetic contact points (the data set has none): a Brazilian mobile
    number and WhatsApp derived from the patient id, an e-mail at `pacientes.example` —
    none for 3 % of patients, one that bounces for 2 % — so `drip demo --deliver` shows
    every outcome. Deterministic."""
    first: datetime | None = None
    seen: dict[str, None] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in islice(csv.DictReader(f), limit):
            seen.setdefault(row["PatientId"])
            booked = datetime.fromisoformat(row["ScheduledDay"].replace("Z", "+00:00"))
            first = booked if first is None else min(first, booked)
    if first is None:
        return []
    at, out = first - timedelta(seconds=1), []
    for i, patient in enumerate(seen):
        digest = int(hashlib.sha256(patient.encode()).hexdigest(), 16)
        phone = f"+55279{digest % 10**8:08d}"
        data = {"patient_id": patient, "first_name": FIRST_NAMES[digest % len(FIRST_NAMES)],
                "language": "pt_BR", "phone": phone, "whatsapp": phone}
        if digest % 100 >= 5:
            data["email"] = f"p{digest % 10**10}@pacientes.example"
        elif digest % 100 >= 3:
            data["email"] = f"p{digest % 10**10}@{BOUNCING}"
        out.append(UpstreamRecord(at, -len(seen) + i, "patient.updated", patient.encode(),
                                  _envelope(f"{patient}:contacts", "patient.updated", at,
                                            patient, data)))
    return out


FIRST_NAMES = ("Ana", "Bruno", "Carla", "Diego", "Elisa", "Felipe", "Gabriela", "Hugo", "Isabel",
               "João", "Karina", "Lucas", "Marina", "Nuno", "Olívia", "Paulo", "Rita", "Sérgio")
