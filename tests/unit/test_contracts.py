"""Wire contracts (§9): what upstream systems code against, and what is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from contracts.envelope import InvalidMessage, parse_cloudevent, parse_envelope
from contracts.topics import UPSTREAM_SCHEMAS, Topics

BOOKED = {"id": "e1", "source": "crm", "type": "appointment.booked",
          "time": "2016-04-29T18:38:08Z", "subject": "p1", "clinic_id": "vitoria",
          "data": {"appointment_id": "a1", "patient_id": "p1",
                   "starts_at": "2016-04-30T13:00:00-00:00"}}


def parse(doc: object) -> object:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_envelope(raw, UPSTREAM_SCHEMAS)


def refusal(doc: object) -> str:
    with pytest.raises(InvalidMessage) as err:
        parse(doc)
    return err.value.reason


def test_a_booking_parses_to_utc_times_and_keeps_opaque_ids() -> None:
    ev = parse({**BOOKED, "subject": "9.87654E+14", "time": "2016-04-29T15:38:08-03:00",
                "data": {**BOOKED["data"], "patient_id": "9.87654E+14",
                         "starts_at": "2016-04-30T10:00:00-03:00"}})
    assert ev.data.patient_id == "9.87654E+14"
    assert ev.time == datetime(2016, 4, 29, 18, 38, 8, tzinfo=UTC)
    assert ev.time.tzinfo == UTC and ev.data.starts_at.tzinfo == UTC
    assert ev.data.starts_at == datetime(2016, 4, 30, 13, 0, tzinfo=UTC)


def test_unknown_fields_are_tolerated() -> None:
    assert parse({**BOOKED, "extra": 1}).id == "e1"


def test_malformed_json_is_refused_with_a_reason() -> None:
    assert refusal(b"{not json").startswith("malformed message")


def test_an_unknown_event_type_is_refused() -> None:
    assert refusal({**BOOKED, "type": "appointment.teleported"}) == (
        "unknown event type 'appointment.teleported'")


def test_an_unknown_schema_version_is_refused() -> None:
    assert refusal({**BOOKED, "dataversion": 9}) == (
        "unknown schema version 9 of 'appointment.booked'")


def test_an_impossible_date_is_refused() -> None:
    doc = {**BOOKED, "data": {**BOOKED["data"], "starts_at": "2016-02-30T10:00:00Z"}}
    assert "data.starts_at" in refusal(doc)


def test_a_time_without_offset_is_refused() -> None:
    assert "UTC offset" in refusal({**BOOKED, "time": "2016-04-29T18:38:08"})


def test_every_upstream_type_has_a_topic() -> None:
    topics = Topics("t")
    assert {topics.for_type(t) for t, _ in UPSTREAM_SCHEMAS} == set(topics.upstream)


@pytest.mark.parametrize(("change", "expected"), [
    # times whose conversion to UTC overflows once stalled a partition (issue 6 §1)
    ({"time": "0001-01-01T00:30+01:00"}, "time: Value error, timestamp out of range"),
    ({"time": "9999-12-31T23:30-01:00"}, "time: Value error, timestamp out of range"),
    ({"time": "0001-01-01T00:00:00Z"}, "time: Value error, timestamp must lie between 1900"),
    ({"data": {**BOOKED["data"], "starts_at": 1764000000}},
     "data.starts_at: Value error, must be an ISO-8601 time with a UTC offset, not a number"),
    ({"data": {**BOOKED["data"], "appointment_id": "a\x00b"}}, "data.appointment_id: String"),
    ({"data": {**BOOKED["data"], "patient_id": "p" * 100_000}, "subject": "p" * 100_000},
     "subject: String should have at most 256 characters"),
    ({"subject": "someone-else"}, "Value error, subject must equal data.patient_id"),
    ({"clinic_id": ""}, "clinic_id: String should have at least 1 character"),
    ({"specversion": "0.3"}, "specversion: Input should be '1.0'"),
])
def test_a_contract_refuses_what_would_break_drip_further_in(change: dict, expected: str) -> None:
    assert expected in refusal({**BOOKED, **change})  # issue 6 §2


def test_the_clinic_is_the_cloudevents_extension_clinicid() -> None:  # §9
    doc = {k: v for k, v in BOOKED.items() if k != "clinic_id"}
    assert parse({**doc, "clinicid": "vitoria"}).clinic_id == "vitoria"
    assert parse(BOOKED).clinic_id == "vitoria"  # `clinic_id`: deprecated, still accepted


def test_binary_mode_reads_the_attributes_from_ce_headers() -> None:  # §9
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"e1"), ("ce_source", b"crm"),
               ("ce_type", b"appointment.booked"), ("ce_time", b"2016-04-29T18:38:08Z"),
               ("ce_subject", b"p1"), ("ce_clinicid", b"vitoria"), ("ce_dataversion", b"1"),
               ("content-type", b"application/json")]
    ev = parse_cloudevent(json.dumps(BOOKED["data"]).encode(), headers, UPSTREAM_SCHEMAS)
    assert (ev.id, ev.clinic_id, ev.data.appointment_id) == ("e1", "vitoria", "a1")
    with pytest.raises(InvalidMessage, match="data is not JSON"):
        parse_cloudevent(b"{oops", headers, UPSTREAM_SCHEMAS)


def test_a_tombstone_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="tombstone"):
        parse_cloudevent(None, (), UPSTREAM_SCHEMAS)
