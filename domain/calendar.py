"""The clinic's calendar (§2 business days, §5 business hours): when the clinic is open,
in its own time zone, correct across daylight-saving changes.

Pure: the holidays come in as dates (services read them from the `holidays` library for
the clinic's country and subdivision, plus the clinic's own closed days). Local times
follow PEP 495 (`zoneinfo`): a local time the clocks skip (spring forward) is moved
forward by the length of the gap (02:30 in a 02:00→03:00 gap is 03:30), and a local time
that happens twice (fall back) is the first of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

from domain.errors import DomainError

MONDAY_TO_SATURDAY = frozenset(range(6))  # date.weekday(): Monday is 0
SEARCH_DAYS = 800  # how far ahead an open moment is looked for before giving up


class NeverOpen(DomainError):
    """The calendar has no open moment within `SEARCH_DAYS` days after a given time."""


@dataclass(frozen=True)
class ClinicCalendar:
    """Business hours [`opens`, `closes`) on `open_days`, except the `closed_on` dates, in
    `time_zone` (IANA). Default §5: Monday–Saturday 08:00–20:00."""

    time_zone: str
    open_days: frozenset[int] = MONDAY_TO_SATURDAY
    opens: time = time(8)
    closes: time = time(20)
    closed_on: frozenset[date] = frozenset()

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def local(self, at: datetime) -> datetime:
        """`at` (aware) in the clinic's time zone."""
        return at.astimezone(self.zone)

    def at_local(self, day: date, at: time) -> datetime:
        """`at` o'clock on `day` in the clinic's zone, as UTC (skipped times move forward
        by the gap; repeated times are the first occurrence, whatever `at.fold` says)."""
        return datetime.combine(day, at.replace(fold=0), tzinfo=self.zone).astimezone(UTC)

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.open_days and day not in self.closed_on

    def is_open(self, at: datetime) -> bool:
        """Whether the clinic is open at `at`: a business day, within business hours."""
        day = self.local(at).date()
        return (self.is_business_day(day)
                and self.at_local(day, self.opens) <= at < self.at_local(day, self.closes))

    def next_open(self, at: datetime) -> datetime:
        """The first moment at or after `at` when the clinic is open (UTC); `at` itself
        when it is open. Raises `NeverOpen`."""
        day = self.local(at).date()
        for _ in range(SEARCH_DAYS):
            if self.is_business_day(day):
                start, end = self.at_local(day, self.opens), self.at_local(day, self.closes)
                if at < end:
                    return max(at, start)
            day += timedelta(days=1)
        raise NeverOpen(f"no open moment within {SEARCH_DAYS} days after {at.isoformat()}")

    def add_business_days(self, at: datetime, days: int) -> datetime:
        """`days` (>= 0) business days after `at`: the same local time on the `days`-th
        business day after `at`'s local date, moved to the next open moment if the clinic
        is closed then. Never earlier than `at`. Raises `NeverOpen`, `ValueError`."""
        if days < 0:
            raise ValueError("business days are counted forward only")
        local = self.local(at)
        day, counted = local.date(), 0
        for _ in range(SEARCH_DAYS):
            if counted == days:
                return self.next_open(max(at, self.at_local(day, local.time())))
            day += timedelta(days=1)
            counted += self.is_business_day(day)
        raise NeverOpen(f"fewer than {days} business days within {SEARCH_DAYS} days")
