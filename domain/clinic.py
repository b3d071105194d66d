"""The Clinic aggregate (§1 tenant, §2 calendar, §5 room for limits): what campaign rules
need to know about a clinic. A clinic exists once it is applied (`drip clinic apply`).

The holidays are given as dates (services compute them from the `holidays` library for
the clinic's country and subdivision, plus the clinic's own closed days); the §5 limits
(quiet hours, frequency caps, throughput) are recorded as given, for the guardrails issue
to enforce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, time
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eventsourcing.domain import Aggregate, event

from domain.calendar import MONDAY_TO_SATURDAY, ClinicCalendar
from domain.errors import DomainError


class InvalidClinic(DomainError):
    """A clinic's settings break §1/§2 (unknown time zone, hours that close before they open)."""


@dataclass(frozen=True)
class ClinicSettings:
    """A clinic as applied: `open_days` are `date.weekday()` numbers (Monday 0), hours are
    local [opens, closes), `holidays` a country code and optional subdivision of the
    `holidays` library, `closed_on` the clinic's own closed days, `limits` the §5 limits
    as written (not enforced yet)."""

    clinic_id: str
    name: str
    time_zone: str
    locale: str = "pt_BR"
    open_days: frozenset[int] = MONDAY_TO_SATURDAY
    opens: time = time(8)
    closes: time = time(20)
    holiday_country: str | None = None
    holiday_subdivision: str | None = None
    closed_on: frozenset[date] = frozenset()
    limits: Mapping[str, Any] = field(default_factory=dict)
    phone: str = ""
    booking_url: str = ""

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidClinic(f"unknown IANA time zone {self.time_zone!r}") from None
        if self.opens >= self.closes:
            raise InvalidClinic("business hours must open before they close")
        if not self.open_days or not self.open_days <= set(range(7)):
            raise InvalidClinic("open days are weekday numbers 0 (Monday) to 6 (Sunday)")

    def calendar(self, holidays: Iterable[date] = ()) -> ClinicCalendar:
        """The clinic's calendar with `holidays` (from its country) and its own closed days."""
        return ClinicCalendar(self.time_zone, self.open_days, self.opens, self.closes,
                              frozenset(holidays) | self.closed_on)

    def to_dict(self) -> dict[str, Any]:
        return {"clinic_id": self.clinic_id, "name": self.name, "time_zone": self.time_zone,
                "locale": self.locale, "open_days": sorted(self.open_days),
                "opens": self.opens.isoformat(), "closes": self.closes.isoformat(),
                "holiday_country": self.holiday_country,
                "holiday_subdivision": self.holiday_subdivision,
                "closed_on": sorted(d.isoformat() for d in self.closed_on),
                "limits": dict(self.limits), "phone": self.phone,
                "booking_url": self.booking_url}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClinicSettings:
        return cls(data["clinic_id"], data["name"], data["time_zone"], data["locale"],
                   frozenset(data["open_days"]), time.fromisoformat(data["opens"]),
                   time.fromisoformat(data["closes"]), data.get("holiday_country"),
                   data.get("holiday_subdivision"),
                   frozenset(date.fromisoformat(d) for d in data["closed_on"]),
                   dict(data.get("limits") or {}), data.get("phone", ""),
                   data.get("booking_url", ""))


def clinic_id_of(clinic_id: str) -> UUID:
    """The aggregate id of a clinic."""
    return uuid5(NAMESPACE_URL, f"drip:clinic:{clinic_id}")


class Clinic(Aggregate):
    """A tenant's settings, each change recorded (`Registered`, then `Revised`)."""

    @event("Registered")
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ClinicSettings.from_dict(settings)

    @staticmethod
    def create_id(settings: dict[str, Any]) -> UUID:
        return clinic_id_of(settings["clinic_id"])

    @classmethod
    def register(cls, settings: ClinicSettings) -> Clinic:
        return cls(settings=settings.to_dict())

    def revise(self, settings: ClinicSettings) -> bool:
        """Record changed settings; returns whether anything changed."""
        if settings.clinic_id != self.settings.clinic_id:
            raise InvalidClinic(f"{settings.clinic_id!r} is not clinic {self.settings.clinic_id!r}")
        if settings.to_dict() == self.settings.to_dict():
            return False
        self._revised(settings.to_dict())
        return True

    @event("Revised")
    def _revised(self, settings: dict[str, Any]) -> None:
        self.settings = ClinicSettings.from_dict(settings)
