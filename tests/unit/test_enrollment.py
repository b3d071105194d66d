"""The Enrollment aggregate's rules (§2, §3, §4), pure and fast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.campaign import CampaignDefinition, SendStep
from domain.enrollment import Enrollment, enrollment_id
from domain.errors import InvalidCampaign
from domain.schedule import Wait
from domain.stop_rules import StopReason
from tests.gallery import appointment_reminders, no_show_recovery

REMINDERS = appointment_reminders()
RECOVERY = no_show_recovery()
STARTS = datetime(2016, 5, 10, 13, 0, tzinfo=UTC)
H = timedelta(hours=1)


def names(enrollment: Enrollment) -> list[tuple[str, str | None]]:
    return [(type(e).__name__, getattr(e, "step", None) or getattr(e, "reason", None))
            for e in enrollment.collect_events()]


def remind(at: datetime, starts: datetime = STARTS) -> Enrollment:
    return Enrollment.enroll(REMINDERS, patient_id="p1", subject="a1", at=at, cause="ev",
                             dates={"appointment.starts_at": starts})


class TestScheduling:
    def test_a_step_due_at_enrollment_is_scheduled_for_now_not_skipped(self) -> None:  # §2
        e = remind(STARTS - 100 * H)
        assert e.pending_index == 0 and e.pending_due == STARTS - 100 * H

    def test_a_step_due_strictly_before_its_scheduling_moment_is_skipped_due_in_past(self) -> None:
        e = remind(STARTS - 10 * H)  # 48 h reminder would be due 38 h ago
        e.collect_events()
        assert e.fire_step(REMINDERS, 0, STARTS - 10 * H)
        assert names(e) == [("MessageSent", "confirmation"), ("StepSkipped", "reminder-48h"),
                            ("StepScheduled", "reminder-day-of")]
        assert e.pending_due == STARTS - 3 * H

    def test_walks_every_step_then_completes(self) -> None:  # §3
        e = remind(STARTS - 100 * H)
        assert e.catch_up(REMINDERS, STARTS) == 3
        assert e.status == "completed"
        sent = [s for kind, s in names(e) if kind == "MessageSent"]
        assert sent == ["confirmation", "reminder-48h", "reminder-day-of"]

    def test_fixed_delays_count_from_the_previous_steps_due_time(self) -> None:
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={})
        e.catch_up(RECOVERY, STARTS + timedelta(days=3, hours=3))
        assert e.pending_due == STARTS + 2 * H + timedelta(days=10)

    def test_catch_up_leaves_a_step_due_exactly_at_the_event_time(self) -> None:
        e = remind(STARTS - 100 * H)
        assert e.catch_up(REMINDERS, STARTS - 100 * H) == 0
        assert e.pending_index == 0


class TestIdentityAndIgnoring:
    def test_enrollment_id_is_stable_per_campaign_and_subject(self) -> None:  # §3 identity
        assert remind(STARTS - 50 * H).id == enrollment_id(REMINDERS.id, "a1")
        assert enrollment_id(REMINDERS.id, "a1") != enrollment_id(RECOVERY.id, "a1")

    def test_an_appointment_not_after_the_booking_enrolls_nobody(self) -> None:
        e = remind(STARTS, starts=STARTS)
        assert e.status == "ignored" and e.ignore_reason == "appointment_in_past"
        assert names(e) == [("Ignored", "appointment_in_past")]


class TestStopRules:
    def test_stops_when_patient_books_after_enrollment_began(self) -> None:  # §4
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={})
        e.catch_up(RECOVERY, STARTS + 3 * H)
        e.collect_events()
        assert e.record_booking(RECOVERY, "a2", STARTS + 3 * H, "b")
        assert names(e) == [("AppointmentBooked", None), ("StepSkipped", "rebook-nudge"),
                            ("StepSkipped", "last-chance"), ("Stopped", "appointment_booked")]
        assert e.status == "stopped" and e.pending_due is None

    def test_a_booking_at_the_enrollment_moment_does_not_stop_it(self) -> None:
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={})
        assert not e.record_booking(RECOVERY, "a2", STARTS, "b")
        assert e.is_active

    def test_every_step_counts_as_sent_or_skipped_once(self) -> None:  # sent + skipped = enrolled
        e = remind(STARTS - 100 * H)
        e.catch_up(REMINDERS, STARTS - 40 * H)
        e.stop(REMINDERS, StopReason.APPOINTMENT_CANCELLED, STARTS - 40 * H, "c")
        done = [s for kind, s in names(e) if kind in ("MessageSent", "StepSkipped")]
        assert sorted(done) == sorted(s.name for s in REMINDERS.steps)

    def test_a_stale_or_repeated_timer_sends_nothing(self) -> None:  # §6 never twice
        e = remind(STARTS - 100 * H)
        assert e.fire_step(REMINDERS, 0, STARTS - 100 * H)
        assert not e.fire_step(REMINDERS, 0, STARTS - 100 * H)
        assert not e.fire_step(REMINDERS, 1, STARTS - 1 * H)  # wrong due time

    def test_opting_out_of_one_channel_skips_only_its_sends(self) -> None:  # §4 opted_out
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={})
        e.record_opt_out(RECOVERY, "sms", STARTS + H, "o")
        e.catch_up(RECOVERY, STARTS + timedelta(days=30))
        kinds = [(k, s) for k, s in names(e) if k in ("MessageSent", "StepSkipped")]
        assert kinds == [("StepSkipped", "we-missed-you"), ("MessageSent", "rebook-nudge"),
                         ("StepSkipped", "last-chance")]
        assert e.status == "completed"

    def test_opting_out_of_everything_stops(self) -> None:
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={})
        e.record_opt_out(RECOVERY, None, STARTS + H, "o")
        assert e.stop_reason == "opted_out"

    def test_a_reply_stops_a_campaign_that_stops_on_responses(self) -> None:
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={})
        e.record_reply(RECOVERY, "sms", STARTS + H, "r")
        assert e.stop_reason == "responded"


class TestStateIsRebuiltFromEvents:
    def test_replaying_the_events_gives_the_same_state(self) -> None:
        e = remind(STARTS - 100 * H)
        e.catch_up(REMINDERS, STARTS - 40 * H)
        events = e.collect_events()
        copy = None
        for ev in events:
            copy = ev.mutate(copy)
        assert copy is not None
        assert (copy.status, copy.pending_index, copy.pending_due, copy.last_due) == (
            e.status, e.pending_index, e.pending_due, e.last_due)


class TestCampaignDefinition:
    def test_a_campaign_without_steps_is_refused(self) -> None:
        with pytest.raises(InvalidCampaign):
            CampaignDefinition("c", "x", "reminder", "UTC", "appointment.booked",
                               "appointment", steps=())

    def test_an_unknown_channel_is_refused(self) -> None:
        with pytest.raises(InvalidCampaign):
            CampaignDefinition("c", "x", "reminder", "UTC", "appointment.booked",
                               "appointment", steps=(SendStep("s", "fax", "t", Wait("enrollment")),))

    def test_a_definition_survives_its_round_trip_through_an_event(self) -> None:
        assert CampaignDefinition.from_dict(RECOVERY.to_dict()) == RECOVERY


def test_a_missed_appointment_enrolls_into_recovery_although_it_started_in_the_past() -> None:
    e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS + H, cause="m",
                          dates={"appointment.starts_at": STARTS})
    assert e.is_active and e.pending_due == STARTS + 3 * H


class TestOptOutsRecordedBeforeEnrollment:  # §4 opted_out, §5 consent
    def test_an_opt_out_of_everything_before_the_trigger_enrolls_nobody(self) -> None:
        e = Enrollment.enroll(REMINDERS, patient_id="p", subject="a", at=STARTS - 50 * H,
                              cause="b", dates={"appointment.starts_at": STARTS},
                              opt_outs=[(None, STARTS - 60 * H, "o")])
        assert e.status == "ignored" and e.ignore_reason == "opted_out"

    def test_an_earlier_opt_out_of_sms_skips_the_sms_steps(self) -> None:
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={}, opt_outs=[("sms", STARTS - H, "o")])
        e.catch_up(RECOVERY, STARTS + timedelta(days=30))
        outcome = [(k, s) for k, s in names(e) if k in ("MessageSent", "StepSkipped")]
        assert outcome == [("StepSkipped", "we-missed-you"), ("MessageSent", "rebook-nudge"),
                           ("StepSkipped", "last-chance")]

    def test_a_later_opt_out_known_already_applies_at_its_own_time(self) -> None:
        e = Enrollment.enroll(RECOVERY, patient_id="p", subject="a", at=STARTS, cause="m",
                              dates={}, opt_outs=[(None, STARTS + 4 * H, "o")])
        assert e.stop_reason == "opted_out"
        sent = [s for k, s in names(e) if k == "MessageSent"]
        assert sent == ["we-missed-you"]  # due at +2 h, before the opt-out at +4 h


class TestRescheduledAppointment:  # §2: a wait-until follows its date
    def test_a_new_start_re_times_the_pending_reminder(self) -> None:
        e = remind(STARTS - 100 * H)
        e.catch_up(REMINDERS, STARTS - 60 * H)  # confirmation sent; 48 h reminder pending
        e.collect_events()
        assert e.reschedule(REMINDERS, {"appointment.starts_at": STARTS + 24 * H},
                            STARTS - 60 * H, "rebooked")
        assert names(e) == [("DatesChanged", None), ("StepScheduled", "reminder-48h")]
        assert e.pending_due == STARTS + 24 * H - 48 * H

    def test_a_new_start_whose_reminder_has_passed_skips_it_due_in_past(self) -> None:
        e = remind(STARTS - 100 * H)
        e.catch_up(REMINDERS, STARTS - 60 * H)
        e.collect_events()
        e.reschedule(REMINDERS, {"appointment.starts_at": STARTS - 20 * H}, STARTS - 60 * H,
                     "moved earlier")  # the 48 h reminder would be due 8 h ago
        assert names(e)[1:] == [("StepSkipped", "reminder-48h"),
                                ("StepScheduled", "reminder-day-of")]
        assert e.pending_due == STARTS - 23 * H

    def test_the_same_start_again_changes_nothing(self) -> None:
        e = remind(STARTS - 100 * H)
        e.collect_events()
        assert not e.reschedule(REMINDERS, {"appointment.starts_at": STARTS}, STARTS - 99 * H,
                                "repeated")
        assert names(e) == []

    def test_a_stale_timer_of_the_old_time_fires_nothing(self) -> None:  # §6
        e = remind(STARTS - 100 * H)
        e.catch_up(REMINDERS, STARTS - 60 * H)
        old_due = e.pending_due
        e.reschedule(REMINDERS, {"appointment.starts_at": STARTS + 24 * H}, STARTS - 60 * H, "r")
        assert old_due is not None and not e.fire_step(REMINDERS, 1, old_due)
