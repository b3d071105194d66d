"""What each upstream event does to enrollments (§3 triggers, §4 stop rules).

Every enrollment is first advanced to the event's time (`catch_up`), so the result
depends on event times only, never on which topic was consumed first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from domain.enrollment import Enrollment, enrollment_id
from domain.stop_rules import StopReason

if TYPE_CHECKING:
    from services.application import DripApplication
    from services.unit_of_work import UnitOfWork

APPOINTMENT_STOPS = {
    "appointment.cancelled": StopReason.APPOINTMENT_CANCELLED,
    "appointment.attended": StopReason.APPOINTMENT_ATTENDED,
}


def prefetch_for(app: DripApplication, uow: UnitOfWork, events: Sequence[Any]) -> None:
    """Load in one go every enrollment the batch may touch."""
    ids, patients = [], []
    for ev in events:
        patients.append((ev.clinic_id, ev.data.patient_id))
        appointment = getattr(ev.data, "appointment_id", None)
        if appointment is not None:
            ids += [enrollment_id(c.id, appointment) for c in app.campaigns_of(ev.clinic_id)]
    uow.prefetch(ids, patients)


def apply_upstream(app: DripApplication, uow: UnitOfWork, ev: Any) -> None:
    """Apply one validated upstream event to the enrollments it concerns."""
    at, data = ev.time, ev.data
    if ev.type == "appointment.booked":
        for e in _stopping(uow, ev.clinic_id, data.patient_id, StopReason.APPOINTMENT_BOOKED):
            e.catch_up(uow.campaign_of(e), at)
            e.record_booking(uow.campaign_of(e), data.appointment_id, at, ev.id)
    elif ev.type in APPOINTMENT_STOPS:
        reason = APPOINTMENT_STOPS[ev.type]
        for c in app.campaigns_of(ev.clinic_id):
            e = uow.get(enrollment_id(c.id, data.appointment_id))
            if e is not None and e.is_active and c.stops_on(reason):
                e.catch_up(c, at)
                e.stop(c, reason, at, ev.id)
    elif ev.type == "patient.opted_out":
        # recorded on the patient for enrollments yet to start, then on the active ones
        uow.patient_or_new(ev.clinic_id, data.patient_id).opt_out(data.channel, at, ev.id)
        for e in uow.active_of(ev.clinic_id, data.patient_id):
            e.catch_up(uow.campaign_of(e), at)
            e.record_opt_out(uow.campaign_of(e), data.channel, at, ev.id)
    elif ev.type == "message.reply_received":
        for e in uow.active_of(ev.clinic_id, data.patient_id):
            e.catch_up(uow.campaign_of(e), at)
            e.record_reply(uow.campaign_of(e), data.channel, at, ev.id)
    _enroll(app, uow, ev)


def _stopping(uow: UnitOfWork, clinic_id: str, patient_id: str,
              reason: StopReason) -> list[Enrollment]:
    return [e for e in uow.active_of(clinic_id, patient_id)
            if uow.campaign_of(e).stops_on(reason)]


def _enroll(app: DripApplication, uow: UnitOfWork, ev: Any) -> None:
    """Enroll into every active campaign this event triggers; duplicates are no-ops (§3)."""
    for c in app.active_campaigns(ev.clinic_id, ev.type):
        subject = ev.data.appointment_id if c.subject == "appointment" else ev.data.patient_id
        if uow.get(enrollment_id(c.id, subject)) is not None:
            continue
        starts_at = getattr(ev.data, "starts_at", None)
        dates = {"appointment.starts_at": starts_at} if starts_at is not None else {}
        patient = uow.patient(ev.clinic_id, ev.data.patient_id)
        uow.add(Enrollment.enroll(c, patient_id=ev.data.patient_id, subject=subject,
                                  at=ev.time, cause=ev.id, dates=dates,
                                  opt_outs=patient.opt_outs if patient else ()))
