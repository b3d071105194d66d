"""Upcasting (§8): `Enrollment.Stopped` version 2 records the step the enrollment was
waiting for when it stopped (`pending_step`); a stop stored by version 1 (without it) still
loads, as version 2 with `pending_step=None` ("unknown"), and rebuilds the same enrollment.

These go through eventsourcing's own mapper (the library upcasts a stored event's state
when it reconstructs the event); tests/integration/test_upcasting.py does the same against
the PostgreSQL event store and the projection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper, StoredEvent

from domain.enrollment import Enrollment
from domain.stop_rules import StopReason
from tests.gallery import appointment_reminders

REMINDERS = appointment_reminders()
STARTS = datetime(2016, 5, 10, 13, 0, tzinfo=UTC)
H = timedelta(hours=1)


def cancelled_after_the_confirmation() -> tuple[Enrollment, list[Any]]:
    """An enrollment that sent its confirmation, then stopped waiting for `reminder-48h`."""
    e = Enrollment.enroll(REMINDERS, patient_id="p1", subject="a1", at=STARTS - 100 * H,
                          cause="ev1", dates={"appointment.starts_at": STARTS})
    assert e.fire_step(REMINDERS, 0, STARTS - 100 * H)
    assert e.stop(REMINDERS, StopReason.APPOINTMENT_CANCELLED, STARTS - 60 * H, "ev2")
    return e, list(e.collect_events())


def mapper() -> Mapper[Any]:
    """The mapper (JSON transcoder, UUID / datetime transcodings) an `Application` uses."""
    return Application().mapper


def as_version_1(m: Mapper[Any], stored: StoredEvent) -> StoredEvent:
    """What version 1 wrote for the same stop: no `pending_step`, no `class_version`."""
    state = m.transcoder.decode(stored.state)
    del state["pending_step"], state["class_version"]
    return StoredEvent(originator_id=stored.originator_id,
                       originator_version=stored.originator_version,
                       topic=stored.topic, state=m.transcoder.encode(state))


class TestStoppedVersion2:
    def test_the_upcaster_gives_a_version_1_state_the_version_2_shape(self) -> None:
        at = STARTS - 60 * H
        state = {"originator_id": "id", "originator_version": 4, "timestamp": at,
                 "reason": "appointment_cancelled", "at": at, "cause": "ev2"}
        Enrollment.Stopped.upcast_v1_v2(state)
        assert state == {"originator_id": "id", "originator_version": 4, "timestamp": at,
                         "reason": "appointment_cancelled", "at": at, "cause": "ev2",
                         "pending_step": None}  # unknown: version 1 did not record it

    def test_a_stop_records_the_step_it_was_waiting_for_as_version_2(self) -> None:
        _, events = cancelled_after_the_confirmation()
        stopped = events[-1]
        assert isinstance(stopped, Enrollment.Stopped)
        assert (stopped.reason, stopped.pending_step) == ("appointment_cancelled",
                                                          "reminder-48h")
        m = mapper()
        state = m.transcoder.decode(m.to_stored_event(stopped).state)
        assert (state["class_version"], state["pending_step"]) == (2, "reminder-48h")

    def test_a_stop_stored_by_version_1_loads_as_version_2_with_an_unknown_step(self) -> None:
        _, events = cancelled_after_the_confirmation()
        m = mapper()
        old = as_version_1(m, m.to_stored_event(events[-1]))
        assert b"pending_step" not in old.state and b"class_version" not in old.state
        loaded = m.to_domain_event(old)
        assert isinstance(loaded, Enrollment.Stopped)
        assert (loaded.reason, loaded.at, loaded.cause, loaded.pending_step) == (
            "appointment_cancelled", STARTS - 60 * H, "ev2", None)

    def test_an_enrollment_whose_stop_is_version_1_rebuilds_to_the_same_state(self) -> None:
        e, events = cancelled_after_the_confirmation()
        m = mapper()
        stored = [m.to_stored_event(ev) for ev in events]
        stored[-1] = as_version_1(m, stored[-1])
        rebuilt: Aggregate | None = None
        for s in stored:
            event = m.to_domain_event(s)
            assert isinstance(event, Enrollment.Event)
            rebuilt = event.mutate(rebuilt)
        assert isinstance(rebuilt, Enrollment)
        assert vars(rebuilt) == vars(e)
        assert (rebuilt.status, rebuilt.stop_reason) == ("stopped", "appointment_cancelled")
