"""The catalogue: every clinic and campaign (with its versions and status) recorded in the
event log, cached in memory and kept fresh.

Consumers read it from worker threads while one of them may refresh it, so a refresh
builds new dicts and swaps them in whole (readers see the old or the new ones, never
half-built ones). A read refreshes when the last refresh is older than `max_age` seconds
(default 0.5), so every process sees a pause, a new version or a new clinic within a
second (§2), at the cost of one small indexed query per `max_age`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from typing import Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from domain.calendar import ClinicCalendar
from domain.campaign import Campaign, CampaignDefinition, CampaignStatus
from domain.clinic import Clinic, ClinicSettings


class UnknownCampaign(LookupError):
    """No campaign with this id (or version) was defined."""


CAMPAIGN_TOPICS = [get_topic(c) for c in (
    Campaign.Defined, Campaign.Revised, Campaign.Activated, Campaign.Paused,
    Campaign.Resumed, Campaign.Archived)]
CLINIC_TOPICS = [get_topic(Clinic.Registered), get_topic(Clinic.Revised)]


class CatalogSource(Protocol):
    """Where clinics and campaigns are read from: the repository and notification log."""

    def get_campaign(self, campaign_id: UUID) -> Campaign: ...

    def get_aggregate(self, aggregate_id: UUID) -> Campaign | Clinic: ...

    def changed_after(self, position: int, topics: list[str]) -> tuple[list[UUID], int]: ...


class CampaignCatalog:
    """Campaigns by id and clinics by clinic id, as of the last `refresh()`."""

    def __init__(self, source: CatalogSource, max_age: float = 0.5,
                 holidays: Callable[[ClinicSettings], set[date]] = lambda s: set()) -> None:
        self._source, self._max_age, self._holidays = source, max_age, holidays
        self._campaigns: dict[UUID, Campaign] = {}
        self._clinics: dict[str, ClinicSettings] = {}
        self._calendars: dict[str, ClinicCalendar] = {}
        self._bound: dict[tuple[UUID, int], CampaignDefinition] = {}
        self._read = 0  # the last notification id refresh() has read
        self._fresh_at = float("-inf")
        self._refreshing = threading.Lock()

    # -- keeping fresh -------------------------------------------------------------------
    def refresh(self) -> None:
        """Take in what the log gained since the last refresh."""
        with self._refreshing:
            self._fresh_at = time.monotonic()
            ids, self._read = self._source.changed_after(
                self._read, CAMPAIGN_TOPICS + CLINIC_TOPICS)
            if not ids:
                return
            campaigns, clinics = dict(self._campaigns), dict(self._clinics)
            for i in ids:
                found = self._source.get_aggregate(i)
                if isinstance(found, Clinic):
                    clinics[found.settings.clinic_id] = found.settings
                else:
                    campaigns[i] = found
            self._campaigns, self._clinics = campaigns, clinics
            self._calendars, self._bound = {}, {}

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._fresh_at > self._max_age:
            self.refresh()

    def put(self, campaign: Campaign) -> None:
        """A campaign this process has just saved."""
        self._campaigns = {**self._campaigns, campaign.id: campaign}
        self._bound = {k: v for k, v in self._bound.items() if k[0] != campaign.id}

    def put_clinic(self, clinic: Clinic) -> None:
        """A clinic this process has just saved."""
        self._clinics = {**self._clinics, clinic.settings.clinic_id: clinic.settings}
        self._calendars, self._bound = {}, {}

    # -- reading -------------------------------------------------------------------------
    def get(self, campaign_id: UUID, version: int | None = None) -> CampaignDefinition:
        """Version `version` (default: the latest) of a campaign, bound to its clinic's
        calendar. Raises `UnknownCampaign`."""
        campaign = self.aggregate(campaign_id)
        number = version or campaign.definition.version
        key = (campaign_id, number)
        found = self._bound.get(key)
        if found is None:
            definition = campaign.versions.get(number)
            if definition is None:
                raise UnknownCampaign(f"campaign {campaign_id} has no version {number}")
            found = self._bound[key] = replace(
                definition, calendar=self.calendar(definition.clinic_id, definition.time_zone))
        return found

    def aggregate(self, campaign_id: UUID) -> Campaign:
        """The campaign's aggregate (status, versions). Raises `UnknownCampaign`."""
        self._maybe_refresh()
        found = self._campaigns.get(campaign_id)
        if found is None:
            try:
                found = self._source.get_campaign(campaign_id)
            except AggregateNotFoundError:
                raise UnknownCampaign(f"no campaign {campaign_id}") from None
            self.put(found)
        return found

    def status(self, campaign_id: UUID, now: datetime) -> CampaignStatus:
        """The campaign's status at `now` (an end date passed: `completed`)."""
        campaign = self.aggregate(campaign_id)
        return campaign.definition.status_at(campaign.status, now)

    def calendar(self, clinic_id: str, time_zone: str) -> ClinicCalendar:
        """The clinic's calendar (hours, holidays, closed days); a clinic never applied
        gets the §5 default hours in `time_zone`."""
        found = self._calendars.get(clinic_id)
        if found is None:
            settings = self._clinics.get(clinic_id)
            found = (settings.calendar(self._holidays(settings)) if settings is not None
                     else ClinicCalendar(time_zone))
            self._calendars = {**self._calendars, clinic_id: found}
        return found

    def clinic(self, clinic_id: str) -> ClinicSettings | None:
        self._maybe_refresh()
        return self._clinics.get(clinic_id)

    def active(self, clinic_id: str, trigger: str, at: datetime) -> list[CampaignDefinition]:
        """The clinic's campaigns this trigger enrolls into at `at` (§2 only `active`,
        before any end date; §3), latest versions, by name."""
        self._maybe_refresh()
        return sorted((self.get(c.id) for c in self._campaigns.values()
                       if c.definition.clinic_id == clinic_id
                       and c.definition.trigger == trigger
                       and c.definition.status_at(c.status, at) == CampaignStatus.ACTIVE),
                      key=lambda d: d.name)

    def all(self) -> list[Campaign]:
        """Every campaign's aggregate."""
        self._maybe_refresh()
        return list(self._campaigns.values())

    def of_clinic(self, clinic_id: str) -> list[CampaignDefinition]:
        """Every campaign of the clinic (latest versions), whatever its status, by name."""
        self._maybe_refresh()
        return sorted((c.definition for c in self._campaigns.values()
                       if c.definition.clinic_id == clinic_id), key=lambda d: d.name)

    def knows_clinic(self, clinic_id: str) -> bool:
        """Whether the clinic exists (§1): applied, or with campaigns defined; refreshes
        once before saying no."""
        if not self._has(clinic_id):
            self.refresh()
        return self._has(clinic_id)

    def _has(self, clinic_id: str) -> bool:
        return clinic_id in self._clinics or any(
            c.definition.clinic_id == clinic_id for c in self._campaigns.values())
