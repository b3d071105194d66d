"""drip's use cases over the event store (eventsourcing `Application`).

Each consumer use case takes one batch of consumed records and turns it into one
transaction (services/application/unit_of_work.py): a redelivery changes nothing
(effectively-once), and bad input becomes a dead letter in that same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification
from psycopg import Cursor

from contracts.timers import StepDueV1
from contracts.topics import UpstreamEvent
from domain.campaign import Campaign, CampaignDefinition
from domain.enrollment import Enrollment
from projections.inline import InlineEffects
from services.application.catalog import CampaignCatalog
from services.application.records import ConsumedRecord
from services.application.unit_of_work import UnitOfWork
from services.application.upstream_rules import apply_upstream, prefetch_for

T = TypeVar("T")


class DripApplication(Application[UUID]):
    """Campaigns and enrollments. Built by `services.bootstrap` (which gives its env)."""

    name = "drip"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.campaigns = CampaignCatalog(self)

    # -- the event store, as the unit of work and the catalogue use it -----------------
    def load_aggregates(self, ids: Iterable[UUID]) -> dict[UUID, Aggregate]:
        """Rebuild many aggregates (enrollments, patients) from their events, one query."""
        found: dict[UUID, Any] = {}
        for stored in self.recorder.select_events_of(sorted(ids)):  # type: ignore[attr-defined]
            event = self.mapper.to_domain_event(stored)
            found[stored.originator_id] = event.mutate(found.get(stored.originator_id))
        return found

    def save_with(self, aggregates: Sequence[Aggregate], effects: InlineEffects) -> None:
        """Save the aggregates' new events and `effects` in one transaction."""
        self.save(*aggregates, effects=effects)

    def query(self, read: Callable[[Cursor[Any]], T]) -> T:
        """`read(cursor)` in a read-only transaction of the event store's pool."""
        with self.recorder.datastore.transaction(commit=False) as cur:  # type: ignore[attr-defined]
            return read(cur)

    def get_campaign(self, campaign_id: UUID) -> Campaign:
        return self.repository.get(campaign_id)  # type: ignore[no-any-return]

    def campaign_ids_after(self, position: int) -> tuple[list[UUID], int]:
        """Ids of campaigns defined after notification `position`, and the new position."""
        head = self.recorder.max_notification_id() or 0  # commit order = id order (its lock)
        ids: list[UUID] = []
        while page := self.recorder.select_notifications(
                position + 1, 1000, stop=head, topics=[CampaignCatalog.defined_topic]):
            ids += [n.originator_id for n in page]
            position = page[-1].id
        return ids, max(position, head)

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
        self.campaigns.put(campaign)
        return campaign.id

    # -- consuming ---------------------------------------------------------------------
    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self, self.campaigns)

    def handle_upstream(self, consumer: str,
                        batch: Sequence[ConsumedRecord[UpstreamEvent]]) -> UnitOfWork:
        """Apply upstream events in order: enroll on triggers, stop on stop rules (§3, §4).

        Bad input (invalid message, unknown clinic) is dead-lettered with its reason.
        Returns the committed unit of work.
        """
        uow = self.unit_of_work()
        fresh = uow.fresh(consumer, batch)
        prefetch_for(uow, [r.message for r in fresh if r.message is not None])
        for r in fresh:
            if r.message is None:
                uow.dead_letter(consumer, r, r.error or "no message")
            elif not self.campaigns.knows_clinic(r.message.clinic_id):
                uow.dead_letter(consumer, r, f"unknown clinic {r.message.clinic_id!r}")
            elif (reason := apply_upstream(uow, r.message)) is not None:
                uow.dead_letter(consumer, r, reason)
        uow.commit()
        return uow

    def handle_step_due(self, consumer: str,
                        batch: Sequence[ConsumedRecord[StepDueV1]]) -> UnitOfWork:
        """Fire the steps that fell due (§2); stop rules are re-checked by the aggregate.

        A `step.due` for another clinic or for no enrollment is dead-lettered (§1).
        Returns the committed unit of work.
        """
        uow = self.unit_of_work()
        fresh = uow.fresh(consumer, batch)
        uow.prefetch(r.message.enrollment_id for r in fresh if r.message is not None)
        for r in fresh:
            enrollment = uow.get(r.message.enrollment_id) if r.message is not None else None
            reason = r.error or _refusal(r.message, enrollment)
            if reason is not None or r.message is None or enrollment is None:
                uow.dead_letter(consumer, r, reason or "no message")
                continue
            enrollment.fire_step(uow.campaign_of(enrollment), r.message.step_index,
                                 r.message.due_at)
        uow.commit()
        return uow

    # -- following the log -------------------------------------------------------------
    def notifications(self, after: int, limit: int, topics: Sequence[str] = (),
                      stop: int | None = None) -> list[Notification]:
        """Up to `limit` notifications with ids in (after, stop], of `topics` if given."""
        return list(self.recorder.select_notifications(after + 1, limit, stop=stop,
                                                       topics=list(topics)))


def _refusal(due: StepDueV1 | None, enrollment: Enrollment | None) -> str | None:
    """Why a well-formed `step.due` cannot apply, if it cannot (§1 tenancy)."""
    if due is None:
        return None
    if enrollment is None:
        return f"unknown enrollment {due.enrollment_id}"
    if enrollment.clinic_id != due.clinic_id:
        return f"enrollment {due.enrollment_id} is not of clinic {due.clinic_id!r}"
    return None
