"""The AsyncAPI document (§9), generated from the subscribers `drip serve` runs, names
every topic and every contract's schema."""

from __future__ import annotations

import json

from contracts.topics import Topics
from services.bootstrap import asyncapi_document
from services.settings import Settings


def test_the_document_lists_every_topic_with_its_contracts() -> None:
    topics = Topics("doc")
    spec = json.loads(asyncapi_document(Settings(topic_prefix="doc")).to_specification().to_json())
    addresses = {c["address"].split(":")[0] for c in spec["channels"].values()}
    assert addresses == {*topics.upstream, topics.step_due, topics.dispatch, topics.receipts,
                         topics.dead_letters}
    schemas = spec["components"]["schemas"]
    for name in ("AppointmentBookedV1", "AppointmentRefV1", "PatientOptedOutV1",
                 "ReplyReceivedV1", "StepDueV1", "DispatchRequestedV1", "DeliveryReceiptV1",
                 "PatientUpdatedV1", "PatientBenefitsUpdatedV1"):
        assert name in schemas
    assert "description" in schemas["AppointmentBookedV1"]["properties"]["starts_at"]
