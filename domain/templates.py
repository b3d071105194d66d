"""Ready-made campaigns (§2 "ready-made templates"), as the demo and new clinics use them."""

from __future__ import annotations

from datetime import timedelta

from domain.campaign import CampaignDefinition, SendStep
from domain.schedule import APPOINTMENT_STARTS_AT, Wait
from domain.stop_rules import StopReason


def appointment_reminders(clinic_id: str, time_zone: str) -> CampaignDefinition:
    """Confirmation at booking, then 48 h and 3 h before `appointment.starts_at` (sms)."""
    return CampaignDefinition(
        clinic_id=clinic_id, name="appointment-reminders", kind="reminder",
        time_zone=time_zone, trigger="appointment.booked", subject="appointment",
        description="Confirm a booking, remind 48 hours and 3 hours before it.",
        stop_rules=frozenset({StopReason.APPOINTMENT_CANCELLED, StopReason.OPTED_OUT}),
        steps=(
            SendStep("confirmation", "sms", "reminders/confirmation", Wait.after_enrollment()),
            SendStep("reminder-48h", "sms", "reminders/48h",
                     Wait.before(APPOINTMENT_STARTS_AT, timedelta(hours=48))),
            SendStep("reminder-day-of", "sms", "reminders/day-of",
                     Wait.before(APPOINTMENT_STARTS_AT, timedelta(hours=3))),
        ),
    )


def no_show_recovery(clinic_id: str, time_zone: str) -> CampaignDefinition:
    """After a missed appointment: sms at +2 h, email 3 days later, sms 7 days after that."""
    return CampaignDefinition(
        clinic_id=clinic_id, name="no-show-recovery", kind="follow_up",
        time_zone=time_zone, trigger="appointment.missed", subject="appointment",
        description="Win back patients who missed an appointment until they book again.",
        stop_rules=frozenset({StopReason.APPOINTMENT_BOOKED, StopReason.RESPONDED,
                              StopReason.OPTED_OUT}),
        steps=(
            SendStep("we-missed-you", "sms", "recovery/we-missed-you",
                     Wait.after_enrollment(timedelta(hours=2))),
            SendStep("rebook-nudge", "email", "recovery/rebook-nudge",
                     Wait.after_previous_step(timedelta(days=3))),
            SendStep("last-chance", "sms", "recovery/last-chance",
                     Wait.after_previous_step(timedelta(days=7))),
        ),
    )
