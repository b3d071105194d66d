"""Upcasting on the real PostgreSQL (§8): `Enrollment.Stopped` events stored by version 1
(no `pending_step`, no `class_version` in their state) still load, rebuild the campaign
statistics to the same rows, and take new commands, once the code writes version 2.

The version 1 events are made the way an upgrade finds them: enrollments are created and
stopped the normal way, then their stored `Stopped` states are rewritten in the event store
to the exact bytes version 1 wrote (same topic; state without the new field or the class
version, which eventsourcing only stores above 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.utils import get_topic

from contracts.receipts import DeliveryReceiptV1
from contracts.topics import UpstreamEvent
from domain.enrollment import Enrollment, enrollment_id
from projections import campaign_stats
from services.application.records import ConsumedRecord
from services.bootstrap import Services, build
from services.entrypoints.subscribers import parse_upstream
from services.settings import Settings
from tests.gallery import CLINIC, appointment_reminders
from tests.timers import fire_due

NOW = datetime.now(UTC).replace(microsecond=0)
H = timedelta(hours=1)
REMINDERS = appointment_reminders()
STOPPED = get_topic(Enrollment.Stopped)
STATS_TABLES = ("campaigns", "enrollments", "campaign_counts", "step_skips")
"""The campaign-statistics read model (projections/campaign_stats.py)."""


def upstream(offset: int, type_: str, data: dict[str, Any],
             at: datetime) -> ConsumedRecord[UpstreamEvent]:
    raw = json.dumps({"id": f"e{offset}", "source": "crm", "type": type_,
                      "time": at.isoformat(), "subject": data["patient_id"],
                      "clinicid": "vitoria", "data": data}).encode()
    key = data["patient_id"].encode()
    return ConsumedRecord("t", 0, offset, key, raw, message=parse_upstream(key, raw, ()))


def appointment(offset: int, type_: str, n: int, at: datetime) -> ConsumedRecord[UpstreamEvent]:
    """`appointment.<type_>` of appointment `a<n>` of patient `p<n>`, in five days."""
    return upstream(offset, f"appointment.{type_}",
                    {"appointment_id": f"a{n}", "patient_id": f"p{n}",
                     "starts_at": (NOW + timedelta(days=5)).isoformat()}, at)


def eid(n: int) -> UUID:
    return enrollment_id(REMINDERS.id, f"a{n}")


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings)
    yield built
    built.close()


def stopped_states(services: Services) -> dict[UUID, dict[str, Any]]:
    """The stored state of every `Stopped` event, decoded, by enrollment."""
    table = services.app.recorder.events_table_name  # type: ignore[attr-defined]
    with services.pool.connection() as conn:
        found = conn.execute(f"SELECT originator_id, state FROM {table} WHERE topic = %s",
                             (STOPPED,)).fetchall()
    return {r[0]: services.app.mapper.transcoder.decode(bytes(r[1])) for r in found}


def rewrite_stops_as_version_1(services: Services) -> int:
    """Make the stored `Stopped` events what version 1 wrote; returns how many."""
    table = services.app.recorder.events_table_name  # type: ignore[attr-defined]
    states = stopped_states(services)
    with services.pool.connection() as conn, conn.transaction():
        for originator_id, state in states.items():
            del state["pending_step"], state["class_version"]
            conn.execute(f"UPDATE {table} SET state = %s WHERE topic = %s"
                         " AND originator_id = %s",
                         (services.app.mapper.transcoder.encode(state), STOPPED, originator_id))
    return len(states)


def statistics(services: Services) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, Any]]:
    """Every row of the campaign-statistics tables, and the report read from them."""
    with services.pool.connection() as conn, conn.cursor() as cur:
        tables = {t: sorted(cur.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                  for t in STATS_TABLES}
        return tables, campaign_stats.report(cur)


def rebuild_statistics(services: Services) -> None:
    """Empty the read model and its log position, then replay the whole log into it."""
    with services.pool.connection() as conn, conn.transaction():
        conn.execute(f"TRUNCATE {', '.join(STATS_TABLES)}")
        conn.execute("DELETE FROM log_positions WHERE name = %s", (services.projector.name,))
    assert statistics(services)[1]["campaigns"] == {}
    services.projector.catch_up()


def enrollments(services: Services) -> dict[UUID, Enrollment]:
    found = services.app.load_aggregates([eid(1), eid(2), eid(3)])
    assert all(isinstance(e, Enrollment) for e in found.values())
    return found  # type: ignore[return-value]


@dataclass
class Upgraded:
    """The services after the rewrite, and what they showed before it."""

    services: Services
    statistics: tuple[dict[str, list[tuple[Any, ...]]], dict[str, Any]]
    enrollments: dict[UUID, Enrollment]


@pytest.fixture
def upgraded(services: Services) -> Upgraded:
    """Three reminders: a1 and a2 cancelled after their confirmation (their stops rewritten
    as version 1), a3 still waiting for its 48-hour reminder."""
    app = services.app
    app.apply_clinic(CLINIC)
    app.define_campaign(REMINDERS)
    app.handle_upstream("up", [appointment(i, "booked", i, NOW) for i in (1, 2, 3)])
    fire_due(services, NOW)  # the three confirmations
    app.handle_upstream("up", [appointment(10 + i, "cancelled", i, NOW + H) for i in (1, 2)])
    services.projector.catch_up()
    assert {s["pending_step"] for s in stopped_states(services).values()} == {"reminder-48h"}
    before = Upgraded(services, statistics(services), enrollments(services))
    assert rewrite_stops_as_version_1(services) == 2
    return before


def test_the_rewritten_stops_are_exactly_what_version_1_stored(upgraded: Upgraded) -> None:
    for state in stopped_states(upgraded.services).values():
        assert sorted(state) == ["at", "cause", "reason", "timestamp"]


def test_enrollments_whose_stop_is_version_1_still_load_unchanged(upgraded: Upgraded) -> None:
    app, before = upgraded.services.app, upgraded.enrollments
    after = enrollments(upgraded.services)
    assert {i: vars(e) for i, e in after.items()} == {i: vars(e) for i, e in before.items()}
    assert (after[eid(1)].status, after[eid(1)].stop_reason) == ("stopped",
                                                                 "appointment_cancelled")
    assert app.repository.get(eid(2)).version == before[eid(2)].version
    events, _ = app.history(eid(1))
    stop = events[-1]
    assert isinstance(stop, Enrollment.Stopped) and stop.pending_step is None  # upcast


def test_the_statistics_rebuilt_from_a_log_of_version_1_stops_are_the_same(
        upgraded: Upgraded) -> None:
    rebuild_statistics(upgraded.services)
    assert statistics(upgraded.services) == upgraded.statistics
    assert upgraded.statistics[1]["campaigns"]["appointment-reminders"]["stopped"] == {
        "appointment_cancelled": 2}


def test_an_upcast_enrollment_takes_new_commands_and_new_stops_are_version_2(
        upgraded: Upgraded) -> None:
    services = upgraded.services
    receipt = DeliveryReceiptV1(
        outcome="delivered", idempotency_key=f"{eid(1)}:confirmation:1", enrollment_id=eid(1),
        clinic_id="vitoria", patient_id="p1", step="confirmation", channel="sms",
        at=NOW + 2 * H, provider="test")
    services.app.handle_receipts("receipts",
                                 [ConsumedRecord("r", 0, 0, None, None, message=receipt)])
    services.app.handle_upstream("up", [appointment(20, "cancelled", 3, NOW + 2 * H)])
    after = enrollments(services)
    assert after[eid(1)].receipts == {"confirmation": ["delivered"]}  # after its v1 stop
    assert after[eid(1)].status == "stopped"
    new_stop = stopped_states(services)[eid(3)]
    assert (new_stop["class_version"], new_stop["pending_step"]) == (2, "reminder-48h")

    rebuild_statistics(services)  # the whole log: two version 1 stops, one version 2
    reminders = statistics(services)[1]["campaigns"]["appointment-reminders"]
    assert reminders["stopped"] == {"appointment_cancelled": 3}
    assert reminders["steps"]["confirmation"] == {"sent": 3, "skipped": 0, "delivered": 1}
