"""The AsyncAPI document (§9) names every topic and every contract's schema."""

from __future__ import annotations

import json

from contracts.topics import Topics
from services.asyncapi import document


def test_the_document_lists_every_topic_with_its_contracts() -> None:
    topics = Topics("doc")
    spec = json.loads(document(topics).to_specification().to_json())
    assert set(spec["channels"]) == {*topics.upstream, topics.step_due, topics.dispatch,
                                     topics.dead_letters}
    schemas = spec["components"]["schemas"]
    for name in ("AppointmentBookedV1", "PatientOptedOutV1", "ReplyReceivedV1", "StepDueV1",
                 "DispatchRequestedV1"):
        assert name in schemas
    assert "description" in schemas["AppointmentBookedV1"]["properties"]["starts_at"]
