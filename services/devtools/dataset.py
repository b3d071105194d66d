"""The public no-show data set (../shared/data) as upstream events, mapped exactly as
issue 2 defines them.

Per row: `appointment.booked` at `ScheduledDay` (UTC as given) with `starts_at` = the
date of `AppointmentDay` at 10:00 America/Sao_Paulo, then `appointment.attended`
(No-show = "No") or `appointment.missed` (No-show = "Yes") at `starts_at + 1 h`.
Patient ids are the `PatientId` text exactly as written (five are in scientific notation).
"""

from __future__ import annotations

import csv
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
              data: dict[str, str]) -> bytes:
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
