"""A seeded random workload for the fault suite, on the wall clock (issue 6).

Two clinics, two campaigns each with waits of seconds, so a run finishes quickly:
reminders (trigger `appointment.booked`: at once, 4 s and 1 s before the start) and
recovery (trigger `appointment.missed`: +1 s, +2 s, +2 s). Each wave publishes
bookings, cancellations, attendances, no-shows, replies and opt-outs for random
patients, some published twice and some out of order, plus poison records.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from domain.campaign import CampaignDefinition, SendStep
from domain.schedule import APPOINTMENT_STARTS_AT, Wait
from domain.stop_rules import StopReason

CLINICS = ("north", "south")
TIME_ZONE = "America/Sao_Paulo"
S = timedelta(seconds=1)


def campaigns(clinic: str) -> list[CampaignDefinition]:
    return [
        CampaignDefinition(
            clinic_id=clinic, name="reminders", kind="reminder", time_zone=TIME_ZONE,
            trigger="appointment.booked", subject="appointment",
            stop_rules=frozenset({StopReason.APPOINTMENT_CANCELLED, StopReason.OPTED_OUT}),
            steps=(SendStep("confirmation", "sms", "r/confirmation", Wait.after_enrollment()),
                   SendStep("soon", "email", "r/soon", Wait.before(APPOINTMENT_STARTS_AT, 4 * S)),
                   SendStep("now", "sms", "r/now", Wait.before(APPOINTMENT_STARTS_AT, S)))),
        CampaignDefinition(
            clinic_id=clinic, name="recovery", kind="follow_up", time_zone=TIME_ZONE,
            trigger="appointment.missed", subject="appointment",
            stop_rules=frozenset({StopReason.APPOINTMENT_BOOKED, StopReason.RESPONDED,
                                  StopReason.OPTED_OUT}),
            steps=(SendStep("missed", "sms", "v/missed", Wait.after_enrollment(S)),
                   SendStep("nudge", "email", "v/nudge", Wait.after_previous_step(2 * S)),
                   SendStep("last", "sms", "v/last", Wait.after_previous_step(2 * S)))),
    ]


@dataclass(frozen=True)
class Record:
    """One record as upstream publishes it; `poison` names the defect it carries, if any."""

    event_type: str  # what it claims to be: its topic follows (`Topics.for_type`)
    key: bytes | None
    value: bytes | None
    poison: str | None = None
    event_id: str | None = None


POISON_KINDS = ("malformed_json", "unknown_type", "unknown_version", "unknown_clinic",
                "impossible_date", "nul_in_id", "huge_id", "overflowing_time",
                "number_as_time", "key_mismatch", "tombstone")


@dataclass
class Workload:
    """Generates waves; remembers the appointments it booked (for later events)."""

    seed: int
    rng: random.Random = field(init=False)
    booked: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    published: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _id(self) -> str:
        self.published += 1
        return f"s{self.seed}-e{self.published}"

    def envelope(self, type_: str, clinic: str, patient: str, at: datetime,
                 **data: object) -> dict[str, object]:
        return {"specversion": "1.0", "id": self._id(), "source": "urn:fault-suite",
                "type": type_, "time": at.isoformat(), "subject": patient, "clinicid": clinic,
                "data": {"patient_id": patient, **data}}

    def record(self, doc: dict[str, object], key: str | None = None) -> Record:
        patient = str(doc["subject"])
        return Record(str(doc["type"]), (key or patient).encode(), json.dumps(doc).encode(),
                      event_id=str(doc["id"]))

    def wave(self, size: int, poison: tuple[str, ...], now: datetime | None = None) -> list[Record]:
        now = now or datetime.now(UTC)
        out: list[Record] = []
        for _ in range(size):
            out += self._event(now)
        for kind in poison:
            out.insert(self.rng.randrange(len(out) + 1), self.poison(kind, now))
        return out

    def _event(self, now: datetime) -> list[Record]:
        r = self.rng.random()
        if r < 0.45 or not self.booked:
            clinic = self.rng.choice(CLINICS)
            patient = f"p{self.rng.randrange(40)}"
            appointment = f"a{self.seed}-{len(self.booked)}"
            starts = now + timedelta(seconds=self.rng.uniform(6, 12))
            self.booked.append((clinic, patient, appointment, starts))
            doc = self.envelope("appointment.booked", clinic, patient, now,
                                appointment_id=appointment, starts_at=starts.isoformat())
            rec = self.record(doc)
            return [rec, rec] if self.rng.random() < 0.1 else [rec]  # published twice
        clinic, patient, appointment, starts = self.rng.choice(self.booked)
        if r < 0.60:
            type_ = self.rng.choice(("appointment.cancelled", "appointment.attended",
                                     "appointment.missed"))
            return [self.record(self.envelope(type_, clinic, patient, now,
                                              appointment_id=appointment))]
        if r < 0.80:
            body = self.rng.choice(("ok", "who is this?", "SIM"))
            return [self.record(self.envelope("message.reply_received", clinic, patient, now,
                                              channel="sms", body=body))]
        channel = self.rng.choice(("sms", "email", None))
        # out of order: an opt-out that happened a few seconds before it is published
        at = now - timedelta(seconds=self.rng.uniform(0, 3))
        return [self.record(self.envelope("patient.opted_out", clinic, patient, at,
                                          channel=channel))]

    def poison(self, kind: str, now: datetime) -> Record:
        """A record drip must dead-letter, with the defect `kind`."""
        clinic, patient = self.rng.choice(CLINICS), f"p{self.rng.randrange(40)}"
        good = self.envelope("appointment.booked", clinic, patient, now,
                             appointment_id=f"bad-{self.published}",
                             starts_at=(now + timedelta(seconds=30)).isoformat())
        data = dict(good["data"])  # type: ignore[call-overload]
        match kind:
            case "malformed_json":
                return Record("appointment.booked", patient.encode(), b"{oops", kind)
            case "unknown_type":
                doc = {**good, "type": "appointment.teleported"}
            case "unknown_version":
                doc = {**good, "dataversion": 9}
            case "unknown_clinic":
                doc = {**good, "clinicid": "atlantis"}
            case "impossible_date":
                doc = {**good, "data": {**data, "starts_at": "2030-02-30T10:00:00Z"}}
            case "nul_in_id":
                doc = {**good, "data": {**data, "appointment_id": "a\x00b"}}
            case "huge_id":
                huge = "p" * 100_000
                doc = {**good, "subject": huge, "data": {**data, "patient_id": huge}}
                return Record("appointment.booked", huge.encode(), json.dumps(doc).encode(), kind)
            case "overflowing_time":
                doc = {**good, "time": "0001-01-01T00:30+01:00"}
            case "number_as_time":
                doc = {**good, "data": {**data, "starts_at": 1764000000}}
            case "key_mismatch":
                return Record("appointment.booked", b"someone-else", json.dumps(good).encode(), kind)
            case "tombstone":
                return Record("appointment.booked", patient.encode(), None, kind)
            case _:
                raise ValueError(f"unknown poison kind {kind!r}")
        return Record("appointment.booked", patient.encode(), json.dumps(doc).encode(), kind)
