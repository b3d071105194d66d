"""`patient.*` v1 (§9): published by the CRM, keyed by patient id."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator

from contracts.envelope import Contract, Envelope, Id

Channel = Literal["sms", "email", "whatsapp", "push", "in_app"]


class PatientOptedOutV1(Contract):
    patient_id: Id = Field(description="Opaque patient id")
    channel: Channel | None = Field(None, description="Channel opted out of; null = all (§4)")


class PatientOptedOut(Envelope[PatientOptedOutV1]):
    """The patient opted out of one channel or of all messages (stop rule `opted_out`)."""

    type: Literal["patient.opted_out"] = "patient.opted_out"


class PatientBenefitsUpdatedV1(Contract):
    patient_id: Id = Field(description="Opaque patient id")
    remaining: Decimal = Field(ge=0, le=10_000_000, max_digits=12, decimal_places=2,
                               description="Benefits left to use, in `currency`")
    currency: str = Field("BRL", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    expires_on: date = Field(description="Last day the benefits can be used (clinic's "
                                         "calendar); wait-until anchor `benefits.expires_on`")

    @field_validator("expires_on")
    @classmethod
    def _plausible(cls, value: date) -> date:
        if not 1900 <= value.year <= 2200:
            raise ValueError("expires_on must lie between 1900 and 2200")
        return value


class PatientBenefitsUpdated(Envelope[PatientBenefitsUpdatedV1]):
    """The insurer reported the patient's remaining benefits and their expiry (trigger of
    benefits-expiry outreach; a new date re-times a waiting reminder, §2)."""

    type: Literal["patient.benefits_updated"] = "patient.benefits_updated"
