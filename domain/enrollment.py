"""The Enrollment aggregate (§3, §4): one subject walking one campaign's steps.

Time is always an argument (event time, UTC). Commands decide; the `@event` bodies only
assign state, because they run again on every rebuild. An enrollment's id is `uuid5` of
(campaign id, subject), so a duplicate enroll finds the existing stream (§3 identity).

Event-time rule: before any upstream event at time `t` applies, `catch_up(t)` sends the
steps due strictly before `t`; steps due exactly at `t` wait, so that upstream events at
a moment are handled before steps due at that same moment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain import conditions
from domain.campaign import BranchStep, CampaignDefinition, SendStep, SplitStep
from domain.errors import InvalidCampaign, MissingDate
from domain.schedule import APPOINTMENT_STARTS_AT
from domain.stop_rules import IgnoreReason, SkipReason, StopReason

RECEIPT_EVENTS = {"delivered": "_delivered", "failed": "_failed", "bounced": "_bounced",
                  "opened": "_opened", "clicked": "_clicked"}
"""§6 outcomes a gateway reports, and the command recording each."""


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
        attributes: dict[str, Any]

    class Ignored(Started):
        reason: str

    def __init__(self, campaign_id: UUID, campaign_version: int, clinic_id: str,
                 patient_id: str, subject: str, at: datetime, cause: str,
                 dates: dict[str, datetime] | None = None, reason: str | None = None,
                 attributes: dict[str, Any] | None = None) -> None:
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
        self.pending_step = ""
        self.last_due = at
        self.opted_out_channels: list[str] = []
        self.opted_out_of_all = False
        self.replied = False
        self.sent_steps: list[str] = []
        self.variants: dict[str, str] = {}
        self.receipts: dict[str, list[str]] = {}
        self.attributes = dict(attributes or {})
        self.causes: set[str] = {cause}  # upstream events applied: each applies once

    # -- creation --------------------------------------------------------------------
    @classmethod
    def enroll(cls, campaign: CampaignDefinition, *, patient_id: str, subject: str,
               at: datetime, cause: str, dates: dict[str, datetime],
               opt_outs: Sequence[tuple[str | None, datetime, str]] = (),
               attributes: dict[str, Any] | None = None) -> Enrollment:
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
        deadline = dates.get(campaign.deadline or "")
        if deadline is not None and deadline <= at:
            return cls._create(cls.Ignored, reason=IgnoreReason.DEADLINE_PASSED.value, **common)
        if any(channel is None and when <= at for channel, when, _ in opt_outs):
            return cls._create(cls.Ignored, reason=IgnoreReason.OPTED_OUT.value, **common)
        enrollment = cls._create(cls.Enrolled, dates=dates, attributes=dict(attributes or {}),
                                 **common)
        enrollment._schedule_next(campaign, at, 0)
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

    @property
    def pending_step_name(self) -> str:
        return self.pending_step


    # -- commands --------------------------------------------------------------------
    def fire_step(self, campaign: CampaignDefinition, index: int, due_at: datetime,
                  at: datetime | None = None) -> bool:
        """Handle the timer of step `index` due at `due_at` (§2, §4 re-check, §6), at `at`
        (default `due_at`; later when the step was held by a paused campaign).

        A held step is recorded `StepDeferred`, then skipped `deadline_passed` when the date
        it waited before went by meanwhile. Past the enrollment's deadline (the campaign's
        `deadline` date or end date) the enrollment stops instead (§4 `deadline_passed`).
        Returns False, changing nothing, when that step is no longer pending (a redelivered
        or stale timer): a step is never done twice.
        """
        if not self.is_active or self.pending_index != index or self.pending_due != due_at:
            return False
        at = max(at or due_at, due_at)
        step = campaign.steps[index]
        if at > due_at:
            self._step_deferred(index, step.name, due_at, at, "campaign_paused")
        deadline = self.deadline(campaign)
        if deadline is not None and at > deadline:
            self.stop(campaign, StopReason.DEADLINE_PASSED, at, "deadline")
            return True
        anchor = self.dates.get(step.wait.anchor)
        if at > due_at and anchor is not None and due_at <= anchor < at:
            self._step_skipped(index, step.name, SkipReason.DEADLINE_PASSED.value, at, due_at)
            self._schedule_next(campaign, at, campaign.after(index))
            return True
        self._do(campaign, index, at)
        return True

    def deadline(self, campaign: CampaignDefinition) -> datetime | None:
        """When this enrollment stops by §4 `deadline_passed`, if ever: the campaign's
        `deadline` date on the subject or its end date, whichever is first."""
        found = [d for d in (self.dates.get(campaign.deadline or ""), campaign.ends_at)
                 if d is not None]
        return min(found) if found else None

    def _do(self, campaign: CampaignDefinition, index: int, at: datetime) -> None:
        """Do step `index` at `at`: send (or skip it for an opted-out channel), or decide."""
        step = campaign.steps[index]
        if isinstance(step, BranchStep):
            taken = conditions.holds(step.condition, self.facts)
            target = step.then if taken else step.otherwise
            goto = campaign.index_of(target)
            self._branch_taken(index, step.name, taken, target, goto, at)
        elif isinstance(step, SplitStep):
            variant = step.pick(self.split_key(step.name))
            goto = campaign.index_of(variant.goto) if variant.goto else index + 1
            self._variant_assigned(index, step.name, variant.name, goto, at)
        else:
            goto = campaign.after(index)
            if step.channel in self.opted_out_channels:
                self._step_skipped(index, step.name, SkipReason.OPTED_OUT.value, at, at)
            else:
                key = f"{self.id}:{step.name}:1"
                self._message_sent(index, step.name, step.channel, step.template, at, key,
                                   self.patient_id, self.clinic_id, self.campaign_id)
        self._schedule_next(campaign, at, goto)

    def split_key(self, step: str) -> int:
        """The hash that assigns this enrollment's variant at split `step` (deterministic)."""
        return int.from_bytes(hashlib.sha256(f"{self.id}:{step}".encode()).digest()[:8], "big")

    @property
    def facts(self) -> conditions.Facts:
        """What a branch condition sees (§2 `branch`)."""
        return conditions.Facts(
            replied=self.replied, opted_out_of_all=self.opted_out_of_all,
            opted_out_channels=frozenset(self.opted_out_channels),
            sent_steps=frozenset(self.sent_steps),
            attributes={**self.attributes, **self.dates})

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
        if not self.is_active or not changed or cause in self.causes:
            return False
        self._dates_changed(changed, at, cause)
        self._schedule_next(campaign, at, self.next_index)
        return True

    def stop(self, campaign: CampaignDefinition, reason: StopReason, at: datetime,
             cause: str) -> bool:
        """Stop with `reason` (§4): the pending step and those that would follow it (up to
        a decision) are skipped."""
        if not self.is_active:
            return False
        pending = self.pending_step if self.pending_due is not None else None
        for index in campaign.path_from(self.next_index) or [self.next_index]:
            self._step_skipped(index, campaign.steps[index].name, reason.value, at, None)
        self._stopped(reason.value, at, cause, pending)
        return True

    def record_receipt(self, campaign: CampaignDefinition, step: str, outcome: str,
                       at: datetime, cause: str, error: str | None = None) -> bool:
        """A gateway's receipt for the message of `step` (§6): `delivered`, `failed`,
        `bounced`, `opened` or `clicked`, recorded once per step and outcome, whatever the
        enrollment's status. A failed or bounced message stops the enrollment
        (`delivery_failed`) when its send step says `on_failure: stop`. Returns whether
        it was new. Raises `InvalidCampaign` for an outcome it does not know."""
        if outcome not in RECEIPT_EVENTS:
            raise InvalidCampaign(f"unknown delivery outcome {outcome!r}")
        if step not in self.sent_steps or outcome in self.receipts.get(step, []):
            return False
        getattr(self, RECEIPT_EVENTS[outcome])(step, at, cause, error)
        try:
            sent: object = campaign.steps[campaign.index_of(step)]
        except KeyError:  # a step the version it now runs does not have (migrated)
            sent = None
        if (outcome in ("failed", "bounced") and isinstance(sent, SendStep)
                and sent.on_failure == "stop"):
            self.stop(campaign, StopReason.DELIVERY_FAILED, at, cause)
        return True

    def migrate(self, campaign: CampaignDefinition, step_map: dict[str, str], at: datetime,
                cause: str) -> bool:
        """Move to `campaign` (another version of the same campaign) at `at` (§2): the
        pending step becomes the step of the new version named `step_map.get(name, name)`,
        re-timed there. Returns False when already on that version or not active. Raises
        `InvalidCampaign` when the new version has no such step."""
        if not self.is_active or campaign.version == self.campaign_version:
            return False
        if campaign.id != self.campaign_id:
            raise InvalidCampaign(f"enrollment {self.id} is not in campaign {campaign.name!r}")
        old = self.pending_step_name
        new = step_map.get(old, old)
        if new not in {s.name for s in campaign.steps}:
            raise InvalidCampaign(f"version {campaign.version} of {campaign.name!r} has no "
                                  f"step {new!r} (map {old!r} with --map {old}=STEP)")
        self._migrated(self.campaign_version, campaign.version, old, new, at, cause)
        self._schedule_next(campaign, at, campaign.index_of(new))
        return True

    def record_booking(self, campaign: CampaignDefinition, appointment_id: str,
                       at: datetime, cause: str) -> bool:
        """The patient booked `appointment_id` at `at` (§4 `appointment_booked`)."""
        if not self.is_active or at <= self.started_at or cause in self.causes:
            return False
        self._appointment_booked(appointment_id, at, cause)
        if campaign.stops_on(StopReason.APPOINTMENT_BOOKED):
            self.stop(campaign, StopReason.APPOINTMENT_BOOKED, at, cause)
        return True

    def record_reply(self, campaign: CampaignDefinition, channel: str, at: datetime,
                     cause: str) -> bool:
        """The patient replied on `channel` at `at` (§4 `responded`); a reply from before
        the enrollment began, or one already recorded (a replay), changes nothing."""
        if not self.is_active or at < self.started_at or cause in self.causes:
            return False
        self._responded(channel, at, cause)
        if campaign.stops_on(StopReason.RESPONDED):
            self.stop(campaign, StopReason.RESPONDED, at, cause)
        return True

    def record_opt_out(self, campaign: CampaignDefinition, channel: str | None,
                       at: datetime, cause: str) -> bool:
        """Opt-out of one channel (its sends are skipped) or of all (`None`: stop), §4; one
        already recorded (a replay) changes nothing."""
        if not self.is_active or cause in self.causes:
            return False
        self._opted_out(channel, at, cause)
        if channel is None and campaign.stops_on(StopReason.OPTED_OUT):
            self.stop(campaign, StopReason.OPTED_OUT, at, cause)
        return True

    # -- scheduling (pure decisions; due times are carried in the events) --------------
    def _schedule_next(self, campaign: CampaignDefinition, moment: datetime, index: int) -> None:
        """Schedule step `index` or the first after it that is not skipped, at `moment`.

        A send step due strictly before `moment` is skipped (`due_in_past`, §2); a branch
        or split due at or before `moment` is decided at once; the end completes."""
        steps = campaign.steps
        while index < len(steps):
            step = steps[index]
            try:
                due = step.wait.due_at(enrolled_at=self.started_at, previous_due=self.last_due,
                                       dates=self.dates, calendar=campaign.calendar)
            except MissingDate:
                if isinstance(step, SendStep):
                    self._step_skipped(index, step.name, SkipReason.MISSING_DATE.value,
                                       moment, None)
                    index = campaign.after(index)
                    continue
                due = moment
            if isinstance(step, SendStep) and due < moment:
                self._step_skipped(index, step.name, SkipReason.DUE_IN_PAST.value, moment, due)
                index = campaign.after(index)
                continue
            if not isinstance(step, SendStep) and due <= moment:
                self._do(campaign, index, moment)
                return
            self._step_scheduled(index, step.name, due)
            return
        self._completed(moment)

    # -- events: bodies only assign ------------------------------------------------------
    @event("StepScheduled")
    def _step_scheduled(self, index: int, step: str, due_at: datetime) -> None:
        self.next_index, self.pending_due, self.pending_step = index, due_at, step

    @event("StepDeferred")
    def _step_deferred(self, index: int, step: str, due_at: datetime, until: datetime,
                       reason: str) -> None:
        """The step fell due while it could not go out (§2 pause); it goes at `until`."""

    @event("BranchTaken")
    def _branch_taken(self, index: int, step: str, taken: bool, target: str, goto: int,
                      at: datetime) -> None:
        """A decision is a moment too: the waits after it count from `at`."""
        self.next_index, self.pending_due, self.last_due = goto, None, at

    @event("VariantAssigned")
    def _variant_assigned(self, index: int, step: str, variant: str, goto: int,
                          at: datetime) -> None:
        self.next_index, self.pending_due, self.last_due = goto, None, at
        self.variants = {**self.variants, step: variant}

    @event("Migrated")
    def _migrated(self, from_version: int, to_version: int, from_step: str, to_step: str,
                  at: datetime, cause: str) -> None:
        self.campaign_version, self.pending_due = to_version, None

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
        self.sent_steps = [*self.sent_steps, step]

    @event("MessageDelivered")
    def _delivered(self, step: str, at: datetime, cause: str, error: str | None) -> None:
        self._receipt(step, "delivered")

    @event("MessageFailed")
    def _failed(self, step: str, at: datetime, cause: str, error: str | None) -> None:
        self._receipt(step, "failed")

    @event("MessageBounced")
    def _bounced(self, step: str, at: datetime, cause: str, error: str | None) -> None:
        self._receipt(step, "bounced")

    @event("MessageOpened")
    def _opened(self, step: str, at: datetime, cause: str, error: str | None) -> None:
        self._receipt(step, "opened")

    @event("MessageClicked")
    def _clicked(self, step: str, at: datetime, cause: str, error: str | None) -> None:
        self._receipt(step, "clicked")

    def _receipt(self, step: str, outcome: str) -> None:
        self.receipts = {**self.receipts, step: [*self.receipts.get(step, []), outcome]}

    @event("DatesChanged")
    def _dates_changed(self, dates: dict[str, datetime], at: datetime, cause: str) -> None:
        self.dates = {**self.dates, **dates}
        self.causes.add(cause)

    @event("AppointmentBooked")
    def _appointment_booked(self, appointment_id: str, at: datetime, cause: str) -> None:
        self.causes.add(cause)

    @event("Responded")
    def _responded(self, channel: str, at: datetime, cause: str) -> None:
        self.replied = True
        self.causes.add(cause)

    @event("OptedOut")
    def _opted_out(self, channel: str | None, at: datetime, cause: str) -> None:
        self.causes.add(cause)
        if channel is None:
            self.opted_out_of_all = True
        elif channel not in self.opted_out_channels:
            self.opted_out_channels = [*self.opted_out_channels, channel]

    class Stopped(Aggregate.Event):
        """The enrollment stopped with `reason` (§4) at `at` because of `cause` (upstream
        event id or command). Version 2 adds `pending_step`: the step it was waiting for
        when it stopped (where patients drop off), None when unknown (§8 upcasting)."""

        class_version = 2
        reason: str
        at: datetime
        cause: str
        pending_step: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 did not record the pending step: it is unknown."""
            state["pending_step"] = None

    @event(Stopped)
    def _stopped(self, reason: str, at: datetime, cause: str,
                 pending_step: str | None) -> None:
        self.status, self.stop_reason, self.pending_due = EnrollmentStatus.STOPPED, reason, None

    @event("Completed")
    def _completed(self, at: datetime) -> None:
        self.status, self.pending_due = EnrollmentStatus.COMPLETED, None
