"""drip's use cases over the event store (eventsourcing `Application`).

Each handler takes one batch of consumed Kafka records and turns it into one
transaction (services/unit_of_work.py). Records at or below the consumer's recorded
position are skipped: a redelivery after a crash changes nothing (effectively-once).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import Notification

from contracts.timers import StepDueV1
from domain.campaign import Campaign, CampaignDefinition
from domain.enrollment import Enrollment
from projections import positions
from services.unit_of_work import UnitOfWork
from services.upstream_rules import apply_upstream, prefetch_for


class UnknownCampaign(LookupError):
    """No campaign with this id was defined."""


@dataclass(frozen=True)
class Inbound:
    """One consumed record: where it came from, its bytes, and what parsing made of it.

    Exactly one of `message` (a parsed contract) and `error` (the reason it was
    refused) is set.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    message: Any = None
    error: str | None = None


class DripApplication(Application[UUID]):
    """Campaigns and enrollments. Construct through `services.bootstrap`."""

    name = "drip"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self._campaigns: dict[UUID, Campaign] = {}
        self._campaigns_read = 0  # last notification id load_campaigns has read

    # -- campaigns ---------------------------------------------------------------------
    def define_campaign(self, definition: CampaignDefinition, activate: bool = True) -> UUID:
        """Define (idempotently, by clinic and name) and optionally activate a campaign."""
        try:
            campaign: Campaign = self.repository.get(definition.id)
        except AggregateNotFoundError:
            campaign = Campaign.define(definition)
        if activate:
            campaign.activate()
        self.save(campaign)
        self._campaigns[campaign.id] = campaign
        return campaign.id

    def load_campaigns(self) -> list[Campaign]:
        """Every campaign recorded in the event log. Reads only the notifications after the
        last one it read, so calling it again (for an unknown clinic) stays cheap."""
        topic = f"{Campaign.Defined.__module__}:{Campaign.Defined.__qualname__}"
        head = self.recorder.max_notification_id() or 0  # commit order = id order (its lock)
        while page := self.recorder.select_notifications(self._campaigns_read + 1, 1000,
                                                         stop=head, topics=[topic]):
            for n in page:
                self._campaigns[n.originator_id] = self.repository.get(n.originator_id)
            self._campaigns_read = page[-1].id
        self._campaigns_read = max(self._campaigns_read, head)
        return list(self._campaigns.values())

    def campaign(self, cid: UUID) -> CampaignDefinition:
        if cid not in self._campaigns:
            try:
                self._campaigns[cid] = self.repository.get(cid)
            except AggregateNotFoundError:
                raise UnknownCampaign(f"no campaign {cid}") from None
        return self._campaigns[cid].definition

    def active_campaigns(self, clinic_id: str, trigger: str) -> list[CampaignDefinition]:
        return sorted((c.definition for c in self._campaigns.values()
                       if c.status == "active" and c.definition.clinic_id == clinic_id
                       and c.definition.trigger == trigger), key=lambda d: d.name)

    def campaigns_of(self, clinic_id: str) -> list[CampaignDefinition]:
        return sorted((c.definition for c in self._campaigns.values()
                       if c.definition.clinic_id == clinic_id), key=lambda d: d.name)

    def knows_clinic(self, clinic_id: str) -> bool:
        """Whether the clinic has campaigns (§1); an unknown one re-reads the log first,
        since another process may have defined its campaigns since this one started."""
        if not any(c.definition.clinic_id == clinic_id for c in self._campaigns.values()):
            self.load_campaigns()
        return any(c.definition.clinic_id == clinic_id for c in self._campaigns.values())

    # -- enrollments -------------------------------------------------------------------
    def load_aggregates(self, ids: Iterable[UUID]) -> dict[UUID, Any]:
        """Rebuild many aggregates (enrollments, patients) from their events, one query."""
        found: dict[UUID, Any] = {}
        for stored in self.recorder.select_events_of(sorted(ids)):  # type: ignore[attr-defined]
            event = self.mapper.to_domain_event(stored)
            found[stored.originator_id] = event.mutate(found.get(stored.originator_id))
        return found

    # -- consuming ---------------------------------------------------------------------
    def fresh(self, consumer: str, batch: Sequence[Inbound], uow: UnitOfWork) -> list[Inbound]:
        """Records not yet handled; records the consumer's position advance in `uow`."""
        with self.recorder.datastore.transaction(commit=False) as cur:
            known = positions.load(cur, consumer, {(r.topic, r.partition) for r in batch})
        fresh = [r for r in batch if r.offset > known.get((r.topic, r.partition), -1)]
        last: dict[tuple[str, int], int] = {}
        for r in fresh:
            last[(r.topic, r.partition)] = max(r.offset, last.get((r.topic, r.partition), -1))
        for (topic, partition), offset in sorted(last.items()):
            uow.advance(consumer, topic, partition, known.get((topic, partition)), offset)
        return fresh

    def handle_step_due(self, consumer: str, batch: Sequence[Inbound]) -> UnitOfWork:
        """Fire the steps that fell due (§2); stop rules are re-checked by the aggregate.

        Returns the committed unit of work (its dead letters are to be published).
        """
        uow = UnitOfWork(self)
        fresh = self.fresh(consumer, batch, uow)
        uow.prefetch(r.message.enrollment_id for r in fresh if r.message is not None)
        for r in fresh:
            due: StepDueV1 | None = r.message
            enrollment = uow.get(due.enrollment_id) if due is not None else None
            reason = r.error or _refusal(due, enrollment)
            if reason is not None or due is None or enrollment is None:
                uow.dead_letter(consumer, r.topic, r.partition, r.offset, r.key, r.value,
                                reason or "empty step.due")
                continue
            enrollment.fire_step(uow.campaign_of(enrollment), due.step_index, due.due_at)
        uow.commit()
        return uow

    def handle_upstream(self, consumer: str, batch: Sequence[Inbound]) -> UnitOfWork:
        """Apply upstream events in order: enroll on triggers, stop on stop rules (§3, §4).

        Bad input (invalid message, unknown clinic) is dead-lettered with its reason.
        Returns the committed unit of work (its dead letters are to be published).
        """
        uow = UnitOfWork(self)
        fresh = self.fresh(consumer, batch, uow)
        prefetch_for(self, uow, [r.message for r in fresh if r.message is not None])
        for r in fresh:
            reason = r.error
            if reason is None and not self.knows_clinic(r.message.clinic_id):
                reason = f"unknown clinic {r.message.clinic_id!r}"
            if reason is not None:
                uow.dead_letter(consumer, r.topic, r.partition, r.offset, r.key, r.value, reason)
                continue
            apply_upstream(self, uow, r.message)
        uow.commit()
        return uow

    def notifications(self, after: int, limit: int, topics: Sequence[str] = ()) -> list[Notification]:
        return list(self.recorder.select_notifications(after + 1, limit, topics=list(topics)))


def _refusal(due: StepDueV1 | None, enrollment: Enrollment | None) -> str | None:
    """Why a well-formed `step.due` cannot apply, if it cannot (§1 tenancy)."""
    if due is None:
        return None
    if enrollment is None:
        return f"unknown enrollment {due.enrollment_id}"
    if enrollment.clinic_id != due.clinic_id:
        return f"enrollment {due.enrollment_id} is not of clinic {due.clinic_id!r}"
    return None
