"""Stop reasons of §4 (auto-exit), skip reasons of §2 and ignore reasons of §3, as the words
events carry. Only the reasons a rule can produce today are listed; issues add the rest."""

from __future__ import annotations

from enum import StrEnum


class StopReason(StrEnum):
    """Why an enrollment stopped (§4). Also the skip reason of the steps it never reached."""

    APPOINTMENT_BOOKED = "appointment_booked"
    RESPONDED = "responded"
    OPTED_OUT = "opted_out"
    APPOINTMENT_CANCELLED = "appointment_cancelled"
    APPOINTMENT_ATTENDED = "appointment_attended"
    DEADLINE_PASSED = "deadline_passed"
    CAMPAIGN_ARCHIVED = "campaign_archived"
    MANUAL = "manual"
    DELIVERY_FAILED = "delivery_failed"


class SkipReason(StrEnum):
    """Why one step was not sent although the enrollment went on (§2, §4)."""

    DUE_IN_PAST = "due_in_past"
    OPTED_OUT = "opted_out"
    MISSING_DATE = "missing_date"
    DEADLINE_PASSED = "deadline_passed"


class IgnoreReason(StrEnum):
    """Why a trigger enrolled nobody (§3)."""

    APPOINTMENT_IN_PAST = "appointment_in_past"
    DEADLINE_PASSED = "deadline_passed"
    OPTED_OUT = "opted_out"
