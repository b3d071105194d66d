"""Clinics and campaigns as data on the real PostgreSQL (§1, §2, issue 7): a clinic exists
when applied and its patients' facts are kept before any campaign; only active campaigns
enroll; a pause holds due steps in the timer service and every process sees it within a
second; resume sends what was held; archive stops enrollments in flight; a changed file is
a new version that enrollments in flight do not follow until migrated."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.timers import StepDueV1
from contracts.topics import UpstreamEvent
from domain.campaign import CampaignDefinition
from domain.enrollment import Enrollment, enrollment_id
from projections import dead_letters, timers
from services.application.app import DripApplication
from services.application.records import ConsumedRecord
from services.bootstrap import Services, build, build_application
from services.entrypoints.subscribers import parse_upstream
from services.settings import Settings
from tests.gallery import CLINIC, appointment_reminders
from tests.timers import fire_due

NOW = datetime.now(UTC).replace(microsecond=0)


def event(offset: int, type_: str, data: dict[str, Any], at: datetime = NOW,
          clinic: str = "vitoria") -> ConsumedRecord[UpstreamEvent]:
    raw = json.dumps({"id": f"e{offset}", "source": "crm", "type": type_,
                      "time": at.isoformat(), "subject": data["patient_id"],
                      "clinicid": clinic, "data": data}).encode()
    key = data["patient_id"].encode()
    return ConsumedRecord("t", 0, offset, key, raw, message=parse_upstream(key, raw, ()))


def booked(offset: int, appointment: str, patient: str = "p1",
           starts: datetime = NOW + timedelta(days=5)) -> ConsumedRecord[UpstreamEvent]:
    return event(offset, "appointment.booked", {"appointment_id": appointment,
                                                "patient_id": patient,
                                                "starts_at": starts.isoformat()})


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings)
    yield built
    built.close()


def query(services: Services, read: Any) -> Any:
    with services.pool.connection() as conn, conn.cursor() as cur:
        return read(cur)


def reminders_of(app: DripApplication) -> CampaignDefinition:
    return app.campaigns.get(appointment_reminders().id)


def enrollment(services: Services, appointment: str,
               campaign: CampaignDefinition | None = None) -> Enrollment:
    c = campaign or appointment_reminders()
    found = services.app.repository.get(enrollment_id(c.id, appointment))
    assert isinstance(found, Enrollment)
    return found


def test_an_opt_out_before_any_campaign_is_kept_for_a_clinic_that_exists(
        services: Services) -> None:  # issue 7: never dropped, never forgotten
    app = services.app
    opt_out = event(0, "patient.opted_out", {"patient_id": "p1", "channel": None},
                    at=NOW - timedelta(hours=1))
    assert dead_letters_of(app.handle_upstream("up", [opt_out])) == ["unknown clinic 'vitoria'"]
    assert app.apply_clinic(CLINIC) == "registered"
    assert app.apply_clinic(CLINIC) == "unchanged"
    assert dead_letters_of(app.handle_upstream("up", [replace(opt_out, offset=1)])) == []
    app.define_campaign(appointment_reminders())
    app.handle_upstream("up", [booked(2, "a1")])
    assert enrollment(services, "a1").status == "ignored"  # the earlier opt-out is honoured
    assert query(services, timers.count_due) == 0


def dead_letters_of(uow: Any) -> list[str]:
    return [d.reason for d in uow.effects.dead_letters]


def test_only_an_active_campaign_enrolls(services: Services) -> None:  # §2
    app = services.app
    app.apply_clinic(CLINIC)
    campaign, outcome = app.apply_campaign(appointment_reminders())
    assert (outcome, campaign.status) == ("defined", "draft")
    app.handle_upstream("up", [booked(0, "a1")])
    assert query(services, timers.count_due) == 0
    app.change_status(campaign.id, "activate", NOW)
    app.handle_upstream("up", [booked(1, "a2")])
    assert query(services, timers.count_due) == 1


def test_a_pause_holds_due_steps_everywhere_and_resume_sends_them(
        services: Services, settings: Settings) -> None:  # §2 pause / resume
    app = services.app
    app.apply_clinic(CLINIC)
    app.define_campaign(appointment_reminders())
    other = build_application(settings)  # another process's catalogue, read at start
    try:
        reminders = appointment_reminders().id
        assert other.campaigns.status(reminders, NOW) == "active"
        app.handle_upstream("up", [booked(0, "a1")])  # confirmation due now
        app.change_status(reminders, "pause", NOW)
        time.sleep(other.campaigns._max_age + 0.1)
        assert other.campaigns.status(reminders, NOW) == "paused"  # within a second
        assert other.campaigns.active("vitoria", "appointment.booked", NOW) == []

        assert fire_due(services, NOW + timedelta(hours=1)) == []  # held by the timer service
        with services.pool.connection() as conn, conn.cursor() as cur:
            assert timers.next_due(cur) is None  # and it does not spin on it
        other.handle_upstream("up", [booked(1, "a2")])  # a paused campaign enrolls nobody
        assert query(services, timers.count_due) == 1

        resumed = NOW + timedelta(hours=2)
        app.change_status(reminders, "resume", resumed)
        (held,) = fire_due(services, resumed)
        assert held.held_until == resumed
        e = enrollment(services, "a1")
        assert e.sent_steps == ["confirmation"] and e.last_due == resumed
        kinds = [type(ev).__name__ for ev in services.app.repository.event_store.get(e.id)]
        assert kinds[1:4] == ["StepScheduled", "StepDeferred", "MessageSent"]
    finally:
        other.close()


def test_a_step_due_that_arrives_during_a_pause_waits_for_the_resume(
        services: Services) -> None:
    app = services.app
    app.apply_clinic(CLINIC)
    app.define_campaign(appointment_reminders())
    app.handle_upstream("up", [booked(0, "a1")])
    with services.pool.connection() as conn, conn.cursor() as cur:
        (timer,) = timers.claim_due(cur, NOW, 10)  # published just before the pause...
    app.change_status(appointment_reminders().id, "pause", NOW)
    due = StepDueV1(enrollment_id=timer.enrollment_id, clinic_id="vitoria", patient_id="p1",
                    step_index=0, due_at=timer.due_at)
    app.handle_step_due("steps", [ConsumedRecord("s", 0, 0, None, None, message=due)])
    assert enrollment(services, "a1").sent_steps == []  # ...is handled while paused: held
    app.change_status(appointment_reminders().id, "resume", NOW + timedelta(minutes=5))
    assert len(fire_due(services, NOW + timedelta(minutes=5))) == 1
    assert enrollment(services, "a1").sent_steps == ["confirmation"]


def test_archive_stops_enrollments_in_flight_at_their_next_step(services: Services) -> None:
    app = services.app
    app.apply_clinic(CLINIC)
    app.define_campaign(appointment_reminders())
    app.handle_upstream("up", [booked(0, "a1")])
    app.change_status(appointment_reminders().id, "archive", NOW)
    fire_due(services, NOW)
    e = enrollment(services, "a1")
    assert (e.status, e.stop_reason) == ("stopped", "campaign_archived")
    with pytest.raises(Exception, match="archived"):
        app.change_status(appointment_reminders().id, "activate", NOW)


def test_a_new_version_leaves_enrollments_in_flight_until_migrated(services: Services) -> None:
    app = services.app
    app.apply_clinic(CLINIC)
    v1 = appointment_reminders()
    app.define_campaign(v1)
    app.handle_upstream("up", [booked(0, "a1", starts=NOW + timedelta(days=10))])
    fire_due(services, NOW)  # confirmation sent; reminder-48h pending
    steps = list(v1.steps)
    steps[1] = replace(steps[1], name="reminder-72h",
                       wait=replace(steps[1].wait, offset=-timedelta(hours=72)))
    campaign, outcome = app.apply_campaign(replace(v1, steps=tuple(steps)))
    assert (outcome, campaign.definition.version) == ("revised", 2)
    assert app.apply_campaign(replace(v1, steps=tuple(steps)))[1] == "unchanged"

    app.handle_upstream("up", [booked(1, "a2", starts=NOW + timedelta(days=10))])
    assert enrollment(services, "a1").campaign_version == 1  # in flight: keeps version 1
    assert enrollment(services, "a2").campaign_version == 2  # new: the latest version

    with pytest.raises(Exception, match="no step 'reminder-48h'"):
        app.migrate(campaign.id, 2, {}, NOW)
    assert enrollment(services, "a1").campaign_version == 1  # a refused migration moves none
    assert app.migrate(campaign.id, 2, {"reminder-48h": "reminder-72h"}, NOW) == 1
    moved = enrollment(services, "a1")
    assert (moved.campaign_version, moved.pending_step) == (2, "reminder-72h")
    assert moved.pending_due == NOW + timedelta(days=10) - timedelta(hours=72)
    with services.pool.connection() as conn, conn.cursor() as cur:
        due = {t.enrollment_id: t.due_at for t in timers.claim_due(cur, NOW + timedelta(days=30), 10)}
    assert due[moved.id] == moved.pending_due  # the timer follows
    assert query(services, dead_letters.count) == 0
