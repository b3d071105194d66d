"""What each upstream event does to enrollments (§3 triggers, §4 stop rules).

Every enrollment is first advanced to the event's time (`catch_up`), so the result
depends on event times only, never on which topic was consumed first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time
from typing import Any

from contracts.appointments import (
    AppointmentAttended,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentMissed,
)
from contracts.messages import ReplyReceived
from contracts.patients import PatientBenefitsUpdated, PatientOptedOut, PatientUpdated
from contracts.topics import UpstreamEvent
from domain.campaign import CampaignDefinition
from domain.enrollment import Enrollment, enrollment_id
from domain.schedule import APPOINTMENT_STARTS_AT, BENEFITS_EXPIRES_ON
from domain.stop_rules import StopReason
from services.application.unit_of_work import UnitOfWork

Appointment = AppointmentBooked | AppointmentCancelled | AppointmentAttended | AppointmentMissed


def prefetch_for(uow: UnitOfWork, events: Sequence[UpstreamEvent]) -> None:
    """Load in one go every enrollment and patient the batch may touch."""
    ids, patients = [], []
    for ev in events:
        patients.append((ev.clinic_id, ev.data.patient_id))
        if isinstance(ev, Appointment):
            ids += [enrollment_id(c.id, ev.data.appointment_id)
                    for c in uow.campaigns.of_clinic(ev.clinic_id)]
    uow.prefetch(ids, patients)


def refusal(uow: UnitOfWork, ev: UpstreamEvent) -> str | None:
    """Why a valid event cannot apply, if it cannot: an appointment drip knows as another
    patient's (§1: an event of one patient never changes another's enrollments)."""
    if isinstance(ev, Appointment):
        for c, e in _bound_to(uow, ev.clinic_id, ev.data.appointment_id):
            if e.patient_id != ev.data.patient_id:
                return (f"appointment {ev.data.appointment_id!r} belongs to another patient "
                        f"(campaign {c.name!r})")
    return None


def _bound_to(uow: UnitOfWork, clinic_id: str,
              appointment_id: str) -> list[tuple[CampaignDefinition, Enrollment]]:
    """The enrollments whose subject is this appointment, with the campaign versions they run."""
    found = (uow.get(enrollment_id(c.id, appointment_id))
             for c in uow.campaigns.of_clinic(clinic_id))
    return [(uow.campaign_of(e), e) for e in found if e is not None]


def apply_upstream(uow: UnitOfWork, ev: UpstreamEvent) -> str | None:
    """Apply one validated upstream event to the enrollments it concerns, then enroll
    into the campaigns it triggers. Returns why it was refused instead, if it was (a dead
    letter's reason), changing nothing."""
    if (reason := refusal(uow, ev)) is not None:
        return reason
    match ev:
        case AppointmentBooked():
            if (reason := _reschedule(uow, ev)) is not None:
                return reason
            for e in uow.active_of(ev.clinic_id, ev.data.patient_id):
                campaign = uow.campaign_of(e)
                if campaign.stops_on(StopReason.APPOINTMENT_BOOKED):
                    uow.catch_up(e, ev.time)
                    e.record_booking(campaign, ev.data.appointment_id, ev.time, ev.id)
        case AppointmentCancelled():
            _stop_appointment(uow, ev, StopReason.APPOINTMENT_CANCELLED)
        case AppointmentAttended():
            _stop_appointment(uow, ev, StopReason.APPOINTMENT_ATTENDED)
        case PatientOptedOut():
            # recorded on the patient for enrollments yet to start, then on the active ones
            uow.patient_or_new(ev.clinic_id, ev.data.patient_id).opt_out(
                ev.data.channel, ev.time, ev.id)
            for e in uow.active_of(ev.clinic_id, ev.data.patient_id):
                uow.catch_up(e, ev.time)
                e.record_opt_out(uow.campaign_of(e), ev.data.channel, ev.time, ev.id)
        case ReplyReceived():
            for e in uow.active_of(ev.clinic_id, ev.data.patient_id):
                uow.catch_up(e, ev.time)
                e.record_reply(uow.campaign_of(e), ev.data.channel, ev.time, ev.id)
        case PatientBenefitsUpdated():
            for e in uow.active_of(ev.clinic_id, ev.data.patient_id):
                if BENEFITS_EXPIRES_ON in e.dates:  # a wait-until follows its date (§2)
                    c = uow.campaign_of(e)
                    uow.catch_up(e, ev.time)
                    e.reschedule(c, _subject_data(c, ev)[0], ev.time, ev.id)
        case PatientUpdated():
            details = ev.data.model_dump(exclude={"patient_id"}, exclude_none=True)
            uow.patient_or_new(ev.clinic_id, ev.data.patient_id).update_details(
                details, ev.time, ev.id)
        case AppointmentMissed():
            pass  # a trigger only
    _enroll(uow, ev)
    return None


def _reschedule(uow: UnitOfWork, ev: AppointmentBooked) -> str | None:
    """The same appointment booked again: a new `starts_at` re-times the pending steps of
    its enrollments (§2); one that already ended cannot follow, which is refused."""
    moved = []
    for c, e in _bound_to(uow, ev.clinic_id, ev.data.appointment_id):
        if ev.id in e.causes or e.dates.get(APPOINTMENT_STARTS_AT) in (None, ev.data.starts_at):
            continue  # applied before (a replay), unbound, or the same booking again
        if not e.is_active:
            return (f"appointment {ev.data.appointment_id!r} rescheduled, but its enrollment "
                    f"in {c.name!r} is {e.status}")
        moved.append((c, e))
    for c, e in moved:  # all checked first: a refused event changes nothing
        uow.catch_up(e, ev.time)
        e.reschedule(c, {APPOINTMENT_STARTS_AT: ev.data.starts_at}, ev.time, ev.id)
    return None


def _stop_appointment(uow: UnitOfWork, ev: AppointmentCancelled | AppointmentAttended,
                      reason: StopReason) -> None:
    """Stop the enrollments bound to this appointment whose campaign stops on `reason`."""
    for c, e in _bound_to(uow, ev.clinic_id, ev.data.appointment_id):
        if e.is_active and c.stops_on(reason):
            uow.catch_up(e, ev.time)
            e.stop(c, reason, ev.time, ev.id)


def _enroll(uow: UnitOfWork, ev: UpstreamEvent) -> None:
    """Enroll into every active campaign this event triggers; duplicates are no-ops (§3)."""
    for c in uow.campaigns.active(ev.clinic_id, ev.type, ev.time):
        appointment = isinstance(ev, Appointment) and c.subject == "appointment"
        subject = ev.data.appointment_id if appointment else ev.data.patient_id  # type: ignore[union-attr]
        if uow.get(enrollment_id(c.id, subject)) is not None:
            continue
        dates, attributes = _subject_data(c, ev)
        patient = uow.patient(ev.clinic_id, ev.data.patient_id)
        uow.add(Enrollment.enroll(c, patient_id=ev.data.patient_id, subject=subject,
                                  at=ev.time, cause=ev.id, dates=dates,
                                  opt_outs=patient.opt_outs if patient else (),
                                  attributes=attributes))


def _subject_data(c: CampaignDefinition, ev: UpstreamEvent,
                  ) -> tuple[dict[str, datetime], dict[str, Any]]:
    """The dates (wait-until anchors, UTC) and attributes an event gives its enrollment.

    `benefits.expires_on` (a date) is the start of that day in the clinic's time zone."""
    if isinstance(ev, Appointment) and ev.data.starts_at is not None:
        return {APPOINTMENT_STARTS_AT: ev.data.starts_at}, {}
    if isinstance(ev, PatientBenefitsUpdated):
        return ({BENEFITS_EXPIRES_ON: c.calendar.at_local(ev.data.expires_on, time(0))},
                {"benefits.remaining": str(ev.data.remaining),
                 "benefits.currency": ev.data.currency})
    return {}, {}
