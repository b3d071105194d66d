"""`patient.*` v1 (§9): published by the CRM, keyed by patient id."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

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


E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]
"""A phone number in E.164 form: `+` and 7 to 15 digits."""
Email = Annotated[str, StringConstraints(max_length=254,
                                         pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s]+$")]


class PatientUpdatedV1(Contract):
    """What the CRM knows about a patient; drip keeps the latest (contact points for the
    gateways, §6; merge fields for templates). A field left out is unchanged."""

    patient_id: Id = Field(description="Opaque patient id")
    first_name: str | None = Field(None, max_length=100)
    last_name: str | None = Field(None, max_length=100)
    language: str | None = Field(None, pattern=r"^[a-z]{2}([_-][A-Z]{2})?$")
    email: Email | None = Field(None, description="E-mail contact point")
    phone: E164 | None = Field(None, description="SMS contact point (E.164)")
    whatsapp: E164 | None = Field(None, description="WhatsApp contact point (E.164)")


class PatientUpdated(Envelope[PatientUpdatedV1]):
    """The patient's details or contact points changed (§9 `patient.updated`)."""

    type: Literal["patient.updated"] = "patient.updated"
