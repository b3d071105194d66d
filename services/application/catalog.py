"""The campaign catalogue: every campaign recorded in the event log, cached in memory.

Consumers read it from worker threads while one of them may refresh it, so a refresh
builds a new dict and swaps it in whole (readers see the old or the new one, never a
half-built one). An unknown clinic triggers a refresh (§1): another process may have
defined its campaigns since this one started.
"""

from __future__ import annotations

import threading
from typing import Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from domain.campaign import Campaign, CampaignDefinition, CampaignStatus


class UnknownCampaign(LookupError):
    """No campaign with this id was defined."""


class CampaignSource(Protocol):
    """Where campaigns are read from: eventsourcing's repository and notification log."""

    def get_campaign(self, campaign_id: UUID) -> Campaign: ...

    def campaign_ids_after(self, position: int) -> tuple[list[UUID], int]: ...


class CampaignCatalog:
    """Campaigns by id; `refresh()` reads only what the log gained since the last one."""

    defined_topic = get_topic(Campaign.Defined)

    def __init__(self, source: CampaignSource) -> None:
        self._source = source
        self._campaigns: dict[UUID, Campaign] = {}
        self._read = 0  # the last notification id refresh() has read
        self._refreshing = threading.Lock()

    def refresh(self) -> None:
        """Take in the campaigns defined since the last refresh."""
        with self._refreshing:
            ids, self._read = self._source.campaign_ids_after(self._read)
            if ids:
                self._campaigns = {**self._campaigns,
                                   **{i: self._source.get_campaign(i) for i in ids}}

    def put(self, campaign: Campaign) -> None:
        """A campaign this process has just saved."""
        self._campaigns = {**self._campaigns, campaign.id: campaign}

    def get(self, campaign_id: UUID) -> CampaignDefinition:
        """The definition of a campaign. Raises `UnknownCampaign`."""
        found = self._campaigns.get(campaign_id)
        if found is None:
            try:
                found = self._source.get_campaign(campaign_id)
            except AggregateNotFoundError:
                raise UnknownCampaign(f"no campaign {campaign_id}") from None
            self.put(found)
        return found.definition

    def active(self, clinic_id: str, trigger: str) -> list[CampaignDefinition]:
        """The clinic's active campaigns this trigger enrolls into (§2, §3), by name."""
        return sorted((c.definition for c in self._campaigns.values()
                       if c.status == CampaignStatus.ACTIVE
                       and c.definition.clinic_id == clinic_id
                       and c.definition.trigger == trigger), key=lambda d: d.name)

    def of_clinic(self, clinic_id: str) -> list[CampaignDefinition]:
        """Every campaign of the clinic, whatever its status, by name."""
        return sorted((c.definition for c in self._campaigns.values()
                       if c.definition.clinic_id == clinic_id), key=lambda d: d.name)

    def knows_clinic(self, clinic_id: str) -> bool:
        """Whether the clinic has campaigns (§1); refreshes once before saying no."""
        if not self._has(clinic_id):
            self.refresh()
        return self._has(clinic_id)

    def _has(self, clinic_id: str) -> bool:
        return any(c.definition.clinic_id == clinic_id for c in self._campaigns.values())
