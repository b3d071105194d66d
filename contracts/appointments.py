"""`appointment.*` v1 (§9): published by booking systems, keyed by patient id."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.envelope import Contract, Envelope, Id, UtcDatetime


class AppointmentBookedV1(Contract):
    appointment_id: Id = Field(description="Booking system's appointment id")
    patient_id: Id = Field(description="Opaque patient id, as the source writes it")
    starts_at: UtcDatetime = Field(description="When the appointment starts (ISO-8601; UTC)")


class AppointmentRefV1(Contract):
    appointment_id: Id = Field(description="Booking system's appointment id")
    patient_id: Id = Field(description="Opaque patient id")
    starts_at: UtcDatetime | None = Field(None, description="When it starts/started, if known")


class AppointmentBooked(Envelope[AppointmentBookedV1]):
    """An appointment was booked (trigger of reminder campaigns)."""

    type: Literal["appointment.booked"] = "appointment.booked"


class AppointmentCancelled(Envelope[AppointmentRefV1]):
    """An appointment was cancelled (stop rule `appointment_cancelled`, §4)."""

    type: Literal["appointment.cancelled"] = "appointment.cancelled"


class AppointmentAttended(Envelope[AppointmentRefV1]):
    """The patient came to the appointment."""

    type: Literal["appointment.attended"] = "appointment.attended"


class AppointmentMissed(Envelope[AppointmentRefV1]):
    """The patient did not come (trigger of no-show recovery)."""

    type: Literal["appointment.missed"] = "appointment.missed"
