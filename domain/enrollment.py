"""The Enrollment aggregate (§3, §4): one subject walking one campaign's steps.

Time is always an argument (event time, UTC). Commands decide; the `@event` bodies only
assign state, because they run again on every rebuild. An enrollment's id is `uuid5` of
(campaign id, subject), so a duplicate enroll finds the existing stream (§3 identity).

Event-time rule: before any upstream event at time `t` applies, `catch_up(t)` sends the
steps due strictly before `t`; steps due exactly at `t` wait, so that upstream events at
a moment are handled before steps due at that same moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.campaign import CampaignDefinition
from domain.errors import MissingDate
from domain.schedule import APPOINTMENT_STARTS_AT
from domain.stop_rules import IgnoreReason, SkipReason, StopReason


class EnrollmentStatus(StrEnum):
    """§3: `active` until `completed` (all steps done) or `stopped` (with a reason);
    `ignored` when the trigger enrolled nobody."""

    ACTIVE = "active"
    COMPLETED = "completed"
    STOPPED = "stopped"
    IGNORED = "ignored"


def enrollment_id(campaign_id: UUID, subject: str) -> UUID:
    """The one enrollment per (campaign, subject) of §3."""
    return uuid5(campaign_id, subject)


class Enrollment(Aggregate):
    """State: status, the pending step (index, due time), opted-out channels."""

    class Started(Aggregate.Created):
        """What every start of an enrollment records: campaign, subject, time, cause."""

        campaign_id: UUID
        campaign_version: int
        clinic_id: str
        patient_id: str
        subject: str
        at: datetime
        cause: str

    class Enrolled(Started):
        dates: dict[str, datetime]

    class Ignored(Started):
        reason: str

    def __init__(self, campaign_id: UUID, campaign_version: int, clinic_id: str,
                 patient_id: str, subject: str, at: datetime, cause: str,
                 dates: dict[str, datetime] | None = None, reason: str | None = None) -> None:
        self.campaign_id = campaign_id
        self.campaign_version = campaign_version
        self.clinic_id = clinic_id
        self.patient_id = patient_id
        self.subject = subject
        self.started_at = at
        self.dates = dict(dates or {})
        self.status = EnrollmentStatus.IGNORED if reason else EnrollmentStatus.ACTIVE
        self.ignore_reason = reason
        self.stop_reason: str | None = None
        self.next_index = 0
        self.pending_due: datetime | None = None
        self.last_due = at
        self.opted_out_channels: list[str] = []

    # -- creation --------------------------------------------------------------------
    @classmethod
    def enroll(cls, campaign: CampaignDefinition, *, patient_id: str, subject: str,
               at: datetime, cause: str, dates: dict[str, datetime],
               opt_outs: Sequence[tuple[str | None, datetime, str]] = ()) -> Enrollment:
        """Start an enrollment at `at` and schedule its first step (§3).

        For a campaign that waits on `appointment.starts_at` (reminders), an appointment
        that does not start after `at` enrolls nobody: `Ignored(appointment_in_past)`.
        The patient's known `opt_outs` (channel or None, time, cause) apply as well (§4,
        §5): an opt-out of everything before `at` enrolls nobody (`Ignored(opted_out)`);
        the others are recorded on the enrollment at their own time.
        """
        common: dict[str, Any] = dict(
            id=enrollment_id(campaign.id, subject), campaign_id=campaign.id,
            campaign_version=campaign.version, clinic_id=campaign.clinic_id,
            patient_id=patient_id, subject=subject, at=at, cause=cause)
        starts_at = dates.get(APPOINTMENT_STARTS_AT)
        if APPOINTMENT_STARTS_AT in campaign.date_fields and starts_at is not None and starts_at <= at:
            return cls._create(cls.Ignored, reason=IgnoreReason.APPOINTMENT_IN_PAST.value,
                               **common)
        if any(channel is None and when <= at for channel, when, _ in opt_outs):
            return cls._create(cls.Ignored, reason=IgnoreReason.OPTED_OUT.value, **common)
        enrollment = cls._create(cls.Enrolled, dates=dates, **common)
        enrollment._schedule_next(campaign, moment=at)
        for channel, when, why in sorted(opt_outs, key=lambda o: o[1]):
            enrollment.catch_up(campaign, when)
            enrollment.record_opt_out(campaign, channel, when, why)
        return enrollment

    # -- reading ---------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self.status == EnrollmentStatus.ACTIVE

    @property
    def pending_index(self) -> int | None:
        return self.next_index if self.pending_due is not None else None

    # -- commands --------------------------------------------------------------------
    def fire_step(self, campaign: CampaignDefinition, index: int, due_at: datetime) -> bool:
        """Handle the timer of step `index` due at `due_at` (§2, §4 re-check, §6).

        Returns False, changing nothing, when that step is no longer pending (a
        redelivered or stale timer): a step is never sent twice.
        """
        if not self.is_active or self.pending_index != index or self.pending_due != due_at:
            return False
        step = campaign.steps[index]
        if step.channel in self.opted_out_channels:
            self._step_skipped(index, step.name, SkipReason.OPTED_OUT.value, due_at, due_at)
        else:
            key = f"{self.id}:{step.name}:1"
            self._message_sent(index, step.name, step.channel, step.template, due_at, key,
                               self.patient_id, self.clinic_id, self.campaign_id)
        self._schedule_next(campaign, moment=due_at)
        return True

    def catch_up(self, campaign: CampaignDefinition, until: datetime) -> int:
        """Fire every pending step due strictly before `until`; returns how many."""
        fired = 0
        while self.is_active and self.pending_due is not None and self.pending_due < until:
            fired += self.fire_step(campaign, self.next_index, self.pending_due)
        return fired

    def reschedule(self, campaign: CampaignDefinition, dates: dict[str, datetime],
                   at: datetime, cause: str) -> bool:
        """The subject's dates changed at `at` (a rescheduled appointment): a wait-until
        follows its date, so the pending step is re-timed, and skipped (`due_in_past`) when
        its new time has passed (§2). Steps already sent or skipped stay as they were.

        Returns False, changing nothing, when the dates are the ones already known (a
        repeated booking) or the enrollment is no longer active.
        """
        changed = {k: v for k, v in dates.items() if self.dates.get(k) != v}
        if not self.is_active or not changed:
            return False
        self._dates_changed(changed, at, cause)
        self._schedule_next(campaign, moment=at)
        return True

    def stop(self, campaign: CampaignDefinition, reason: StopReason, at: datetime,
             cause: str) -> bool:
        """Stop with `reason` (§4): the pending step and every later one are skipped."""
        if not self.is_active:
            return False
        for index in range(self.next_index, len(campaign.steps)):
            self._step_skipped(index, campaign.steps[index].name, reason.value, at, None)
        self._stopped(reason.value, at, cause)
        return True

    def record_booking(self, campaign: CampaignDefinition, appointment_id: str,
                       at: datetime, cause: str) -> bool:
        """The patient booked `appointment_id` at `at` (§4 `appointment_booked`)."""
        if not self.is_active or at <= self.started_at:
            return False
        self._appointment_booked(appointment_id, at, cause)
        if campaign.stops_on(StopReason.APPOINTMENT_BOOKED):
            self.stop(campaign, StopReason.APPOINTMENT_BOOKED, at, cause)
        return True

    def record_reply(self, campaign: CampaignDefinition, channel: str, at: datetime,
                     cause: str) -> bool:
        """The patient replied on `channel` (§4 `responded`)."""
        if not self.is_active:
            return False
        self._responded(channel, at, cause)
        if campaign.stops_on(StopReason.RESPONDED):
            self.stop(campaign, StopReason.RESPONDED, at, cause)
        return True

    def record_opt_out(self, campaign: CampaignDefinition, channel: str | None,
                       at: datetime, cause: str) -> bool:
        """Opt-out of one channel (its sends are skipped) or of all (`None`: stop), §4."""
        if not self.is_active:
            return False
        self._opted_out(channel, at, cause)
        if channel is None and campaign.stops_on(StopReason.OPTED_OUT):
            self.stop(campaign, StopReason.OPTED_OUT, at, cause)
        return True

    # -- scheduling (pure decisions; due times are carried in the events) --------------
    def _schedule_next(self, campaign: CampaignDefinition, moment: datetime) -> None:
        """Schedule the next step at `moment`; a step due strictly before it is skipped."""
        while self.next_index < len(campaign.steps):
            index, step = self.next_index, campaign.steps[self.next_index]
            try:
                due = step.wait.due_at(enrolled_at=self.started_at, previous_due=self.last_due,
                                       dates=self.dates, calendar=campaign.calendar)
            except MissingDate:
                self._step_skipped(index, step.name, SkipReason.MISSING_DATE.value, moment, None)
                continue
            if due < moment:
                self._step_skipped(index, step.name, SkipReason.DUE_IN_PAST.value, moment, due)
                continue
            self._step_scheduled(index, step.name, due)
            return
        self._completed(moment)

    # -- events: bodies only assign ------------------------------------------------------
    @event("StepScheduled")
    def _step_scheduled(self, index: int, step: str, due_at: datetime) -> None:
        self.next_index, self.pending_due = index, due_at

    @event("StepSkipped")
    def _step_skipped(self, index: int, step: str, reason: str, at: datetime,
                      due_at: datetime | None) -> None:
        self.next_index, self.pending_due = index + 1, None
        if due_at is not None:
            self.last_due = due_at

    @event("MessageSent")
    def _message_sent(self, index: int, step: str, channel: str, template: str,
                      at: datetime, idempotency_key: str, patient_id: str, clinic_id: str,
                      campaign_id: UUID) -> None:
        """Carries who and where, so the dispatcher needs nothing but this event (§6)."""
        self.next_index, self.pending_due, self.last_due = index + 1, None, at

    @event("DatesChanged")
    def _dates_changed(self, dates: dict[str, datetime], at: datetime, cause: str) -> None:
        self.dates = {**self.dates, **dates}

    @event("AppointmentBooked")
    def _appointment_booked(self, appointment_id: str, at: datetime, cause: str) -> None:
        pass

    @event("Responded")
    def _responded(self, channel: str, at: datetime, cause: str) -> None:
        pass

    @event("OptedOut")
    def _opted_out(self, channel: str | None, at: datetime, cause: str) -> None:
        if channel is not None and channel not in self.opted_out_channels:
            self.opted_out_channels = [*self.opted_out_channels, channel]

    @event("Stopped")
    def _stopped(self, reason: str, at: datetime, cause: str) -> None:
        self.status, self.stop_reason, self.pending_due = EnrollmentStatus.STOPPED, reason, None

    @event("Completed")
    def _completed(self, at: datetime) -> None:
        self.status, self.pending_due = EnrollmentStatus.COMPLETED, None
