"""`patient.*` v1 (§9): published by the CRM, keyed by patient id."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.envelope import Contract, Envelope, Id

Channel = Literal["sms", "email", "whatsapp", "push", "in_app"]


class PatientOptedOutV1(Contract):
    patient_id: Id = Field(description="Opaque patient id")
    channel: Channel | None = Field(None, description="Channel opted out of; null = all (§4)")


class PatientOptedOut(Envelope[PatientOptedOutV1]):
    """The patient opted out of one channel or of all messages (stop rule `opted_out`)."""

    type: Literal["patient.opted_out"] = "patient.opted_out"
