"""The Patient aggregate's details and contact points (§6), and request signatures."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.patient import Patient
from services.adapters.channels import sign, verify

AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_details_change_only_when_they_differ_and_contacts_follow_the_channel() -> None:
    p = Patient("c", "p1")
    assert p.update_details({"first_name": "Ana", "phone": "+5527999990000"}, AT, "e1")
    assert not p.update_details({"first_name": "Ana"}, AT, "e2")
    assert p.contact("sms") == "+5527999990000"
    assert p.contact("email") is None and p.contact("push") is None


def test_a_hard_bounce_invalidates_until_the_contact_point_changes() -> None:
    p = Patient("c", "p1")
    p.update_details({"email": "ana@x.example"}, AT, "e1")
    assert p.invalidate_contact("email", AT, "550")
    assert not p.invalidate_contact("email", AT, "550")
    assert p.contact("email") is None
    p.update_details({"first_name": "Ana"}, AT, "e2")
    assert p.contact("email") is None  # another detail changed: still invalid
    p.update_details({"email": "ana@y.example"}, AT, "e3")
    assert p.contact("email") == "ana@y.example"
    replayed = None
    for ev in p.collect_events():
        replayed = ev.mutate(replayed)
    assert replayed.details == p.details and replayed.invalid_contacts == []


def test_signatures() -> None:
    body = b'{"id": "m1"}'
    assert verify(b"k", body, sign(b"k", body))
    assert not verify(b"k", body, sign(b"other", body))
    assert not verify(b"k", body + b" ", sign(b"k", body))
    assert not verify(b"k", body, None)
