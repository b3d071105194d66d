"""Pure due-time math for waits (§2 `wait`): fixed delays and wait-until a date.

All datetimes are timezone-aware UTC; offsets are `timedelta` (seconds precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.errors import MissingDate

ENROLLMENT = "enrollment"
PREVIOUS_STEP = "previous_step"
APPOINTMENT_STARTS_AT = "appointment.starts_at"
"""The date an appointment-bound enrollment carries (the wait-until anchor of reminders)."""


@dataclass(frozen=True)
class Wait:
    """When a send step falls due: `anchor + offset`.

    `anchor` is `"enrollment"` (the moment the enrollment began), `"previous_step"` (the
    previous step's due time, or the enrollment's start for the first step), or the name
    of a date on the enrollment's subject such as `"appointment.starts_at"` (wait-until).
    A negative offset means "before": `Wait("appointment.starts_at", -timedelta(hours=48))`.
    """

    anchor: str
    offset: timedelta = timedelta(0)

    @classmethod
    def after_enrollment(cls, offset: timedelta = timedelta(0)) -> Wait:
        return cls(ENROLLMENT, offset)

    @classmethod
    def after_previous_step(cls, offset: timedelta) -> Wait:
        return cls(PREVIOUS_STEP, offset)

    @classmethod
    def before(cls, date_field: str, offset: timedelta) -> Wait:
        return cls(date_field, -offset)

    def due_at(
        self, *, enrolled_at: datetime, previous_due: datetime, dates: Mapping[str, datetime]
    ) -> datetime:
        """The due time (UTC) of a step with this wait.

        Raises `MissingDate` when a wait-until names a date the enrollment lacks.
        """
        if self.anchor == ENROLLMENT:
            return enrolled_at + self.offset
        if self.anchor == PREVIOUS_STEP:
            return previous_due + self.offset
        if self.anchor not in dates:
            raise MissingDate(self.anchor)
        return dates[self.anchor] + self.offset

    def to_dict(self) -> dict[str, object]:
        return {"anchor": self.anchor, "offset_seconds": int(self.offset.total_seconds())}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Wait:
        offset = data["offset_seconds"]
        if not isinstance(offset, int):
            raise TypeError(f"offset_seconds must be an integer, not {offset!r}")
        return cls(str(data["anchor"]), timedelta(seconds=offset))
