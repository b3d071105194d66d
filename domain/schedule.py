"""Pure due-time math for waits (§2 `wait`): fixed delays, business days and local times
of day in the clinic's calendar, counted from the enrollment, the previous step, or a
date on the subject (wait-until).

All datetimes are timezone-aware UTC; offsets are `timedelta` (seconds precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from domain.calendar import ClinicCalendar
from domain.errors import MissingDate

ENROLLMENT = "enrollment"
PREVIOUS_STEP = "previous_step"
APPOINTMENT_STARTS_AT = "appointment.starts_at"
"""The date an appointment-bound enrollment carries (the wait-until anchor of reminders)."""
BENEFITS_EXPIRES_ON = "benefits.expires_on"
"""When a patient's benefits expire: the start of that day in the clinic's time zone."""


@dataclass(frozen=True)
class Wait:
    """When a send step falls due, from an anchor moment (§2 `wait`).

    `anchor` is `"enrollment"` (the moment the enrollment began), `"previous_step"` (the
    previous step's due time, or the enrollment's start for the first step), or the name
    of a date on the enrollment's subject such as `"appointment.starts_at"` (wait-until).
    Then, in this order:
    - `offset`: a fixed delay; negative means "before":
      `Wait("appointment.starts_at", -timedelta(hours=48))`;
    - `business_days`: that many business days later in the clinic's calendar, moved
      to its next open moment (`ClinicCalendar.add_business_days`);
    - `local_time`: at that time of day in the clinic's zone, on the anchor's local date
      plus `day_offset` days (`at 07:00 local 2 days before appointment.starts_at`:
      `local_time=time(7), day_offset=-2`), across DST as `ClinicCalendar.at_local` says.
    """

    anchor: str
    offset: timedelta = timedelta(0)
    business_days: int = 0
    local_time: time | None = None
    day_offset: int = 0

    @classmethod
    def after_enrollment(cls, offset: timedelta = timedelta(0)) -> Wait:
        return cls(ENROLLMENT, offset)

    @classmethod
    def after_previous_step(cls, offset: timedelta) -> Wait:
        return cls(PREVIOUS_STEP, offset)

    @classmethod
    def before(cls, date_field: str, offset: timedelta) -> Wait:
        return cls(date_field, -offset)

    @classmethod
    def business_days_after(cls, anchor: str, days: int) -> Wait:
        return cls(anchor, business_days=days)

    @classmethod
    def at_local(cls, anchor: str, at: time, days: int = 0) -> Wait:
        """At `at` local time, `days` days after (negative: before) the anchor's date."""
        return cls(anchor, local_time=at, day_offset=days)

    def due_at(self, *, enrolled_at: datetime, previous_due: datetime,
               dates: Mapping[str, datetime], calendar: ClinicCalendar) -> datetime:
        """The due time (UTC) of a step with this wait, in `calendar` (the clinic's).

        Raises `MissingDate` when a wait-until names a date the enrollment lacks, and
        `NeverOpen` when the calendar has no business day to land on.
        """
        if self.anchor == ENROLLMENT:
            due = enrolled_at
        elif self.anchor == PREVIOUS_STEP:
            due = previous_due
        elif self.anchor in dates:
            due = dates[self.anchor]
        else:
            raise MissingDate(self.anchor)
        due += self.offset
        if self.business_days:
            due = calendar.add_business_days(due, self.business_days)
        if self.local_time is not None:
            day = calendar.local(due).date() + timedelta(days=self.day_offset)
            due = calendar.at_local(day, self.local_time)
        return due

    def to_dict(self) -> dict[str, object]:
        """The stored form; keys beyond anchor and offset only when set, so definitions
        recorded before they existed read back unchanged."""
        out: dict[str, object] = {"anchor": self.anchor,
                                  "offset_seconds": int(self.offset.total_seconds())}
        if self.business_days:
            out["business_days"] = self.business_days
        if self.local_time is not None:
            out["local_time"] = self.local_time.isoformat()
            out["day_offset"] = self.day_offset
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Wait:
        offset, days, shift = (data["offset_seconds"], data.get("business_days", 0),
                               data.get("day_offset", 0))
        local = data.get("local_time")
        if not (isinstance(offset, int) and isinstance(days, int) and isinstance(shift, int)):
            raise TypeError(f"a wait's offsets must be integers: {dict(data)!r}")
        return cls(str(data["anchor"]), timedelta(seconds=offset), days,
                   time.fromisoformat(local) if isinstance(local, str) else None, shift)
