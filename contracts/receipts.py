"""Delivery receipts (§6): what a channel gateway learned about one dispatch request.

Topic `<prefix>.receipts.v1`, key = patient id. Gateways publish `message.delivered`
(SMTP 250, or the provider's delivery callback), `message.failed` (retries exhausted, a
permanent error, no contact point), `message.bounced`, `message.opened`,
`message.clicked`. A receipt may come twice (a callback retried, a gateway restarted):
the enrollment records each outcome of a step once.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.envelope import Contract, UtcDatetime
from contracts.patients import Channel

Outcome = Literal["delivered", "failed", "bounced", "opened", "clicked"]


class DeliveryReceiptV1(Contract):
    type: Literal["message.receipt"] = "message.receipt"
    dataversion: Literal[1] = 1
    outcome: Outcome = Field(description="What happened to the message")
    idempotency_key: str = Field(max_length=300, description="The dispatch request's key")
    enrollment_id: UUID
    clinic_id: str = Field(description="Tenant (§1)")
    patient_id: str = Field(description="Recipient patient id (Kafka key)")
    step: str = Field(description="Step name within the campaign")
    channel: Channel
    at: UtcDatetime = Field(description="When it happened (UTC)")
    provider: str = Field(description="`smtp`, or the HTTP provider's name")
    provider_message_id: str | None = Field(None, max_length=200)
    attempts: int = Field(1, ge=0, description="Attempts the gateway made")
    error: str | None = Field(None, max_length=1000,
                              description="Why it failed: `no_contact_point`, the provider's error")
    permanent: bool = Field(False, description="A hard failure (invalid number, hard bounce)")
