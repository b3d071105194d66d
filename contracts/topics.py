"""Topic names (§9). Every name carries its contract version; a prefix scopes a deployment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.appointments import (
    AppointmentAttended,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentMissed,
)
from contracts.envelope import Envelope
from contracts.messages import ReplyReceived
from contracts.patients import PatientBenefitsUpdated, PatientOptedOut, PatientUpdated

UpstreamEvent = (AppointmentBooked | AppointmentCancelled | AppointmentAttended | AppointmentMissed
                 | PatientOptedOut | PatientBenefitsUpdated | PatientUpdated | ReplyReceived)
"""Every upstream event drip consumes (§9), as its parsed contract class."""

UPSTREAM_SCHEMAS: dict[tuple[str, int], type[Envelope[Any]]] = {
    ("appointment.booked", 1): AppointmentBooked,
    ("appointment.cancelled", 1): AppointmentCancelled,
    ("appointment.attended", 1): AppointmentAttended,
    ("appointment.missed", 1): AppointmentMissed,
    ("patient.opted_out", 1): PatientOptedOut,
    ("patient.benefits_updated", 1): PatientBenefitsUpdated,
    ("patient.updated", 1): PatientUpdated,
    ("message.reply_received", 1): ReplyReceived,
}


@dataclass(frozen=True)
class Topics:
    """The topics of one deployment, e.g. `Topics("drip")`; tests use their own prefix."""

    prefix: str = "drip"

    @property
    def appointments(self) -> str:
        return f"{self.prefix}.appointments.v1"

    @property
    def patients(self) -> str:
        return f"{self.prefix}.patients.v1"

    @property
    def messages(self) -> str:
        return f"{self.prefix}.messages.v1"

    @property
    def step_due(self) -> str:
        return f"{self.prefix}.step-due.v1"

    @property
    def dispatch(self) -> str:
        return f"{self.prefix}.dispatch-requests.v1"

    @property
    def receipts(self) -> str:
        return f"{self.prefix}.receipts.v1"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}.dead-letters.v1"

    @property
    def upstream(self) -> tuple[str, str, str]:
        return (self.appointments, self.patients, self.messages)

    @property
    def all(self) -> list[str]:
        """Every topic of the deployment."""
        return [*self.upstream, self.step_due, self.dispatch, self.receipts, self.dead_letters]

    def for_type(self, event_type: str) -> str:
        """The upstream topic an event type is published on."""
        family = event_type.split(".", 1)[0]
        return {"appointment": self.appointments, "patient": self.patients,
                "message": self.messages}[family]
