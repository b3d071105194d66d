"""Inbound replies (`message.reply_received` v1) and drip's outbound dispatch requests."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from contracts.envelope import Contract, Envelope, Id, UtcDatetime
from contracts.patients import Channel


class ReplyReceivedV1(Contract):
    patient_id: Id = Field(description="Opaque patient id")
    channel: Channel = Field(description="Channel the reply came on")
    body: str = Field("", max_length=10_000, description="Reply text; never logged")


class ReplyReceived(Envelope[ReplyReceivedV1]):
    """The patient replied (stop rule `responded`, §4)."""

    type: Literal["message.reply_received"] = "message.reply_received"


class DispatchRequestedV1(Contract):
    """A send, for a channel gateway to deliver (§6). Kafka key = patient id."""

    type: Literal["message.dispatch_requested"] = "message.dispatch_requested"
    dataversion: Literal[1] = 1
    idempotency_key: str = Field(description="`enrollment:step:attempt`; gateways dedupe on it")
    enrollment_id: UUID = Field(description="The enrollment that sends")
    clinic_id: str = Field(description="Tenant (§1)")
    patient_id: str = Field(description="Recipient patient id")
    campaign_id: UUID = Field(description="Campaign of the enrollment")
    step: str = Field(description="Step name within the campaign")
    channel: Channel = Field(description="Channel to deliver on")
    template: str = Field(description="Template name to render")
    due_at: UtcDatetime = Field(description="When the step fell due (UTC)")
