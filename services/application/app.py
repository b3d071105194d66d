"""drip's use cases over the event store (eventsourcing `Application`).

Each consumer use case takes one batch of consumed records and turns it into one
transaction (services/application/unit_of_work.py): a redelivery changes nothing
(effectively-once), and bad input becomes a dead letter in that same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification
from psycopg import Cursor

from contracts.receipts import DeliveryReceiptV1
from contracts.timers import StepDueV1
from contracts.topics import UpstreamEvent
from domain.campaign import Campaign, CampaignDefinition, CampaignStatus
from domain.clinic import Clinic, ClinicSettings, clinic_id_of
from domain.enrollment import Enrollment, enrollment_id
from domain.stop_rules import StopReason
from projections import active_enrollments
from projections.campaign_states import CampaignState
from projections.inline import InlineEffects
from services.application.catalog import CampaignCatalog, UnknownCampaign
from services.application.definitions import holidays_of
from services.application.records import ConsumedRecord
from services.application.unit_of_work import UnitOfWork
from services.application.upstream_rules import apply_upstream, prefetch_for

T = TypeVar("T")


class DripApplication(Application[UUID]):
    """Campaigns and enrollments. Built by `services.bootstrap` (which gives its env)."""

    name = "drip"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.campaigns = CampaignCatalog(self, holidays=holidays_of)

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

    def get_aggregate(self, aggregate_id: UUID) -> Campaign | Clinic:
        return self.repository.get(aggregate_id)  # type: ignore[no-any-return]

    def changed_after(self, position: int, topics: list[str]) -> tuple[list[UUID], int]:
        """Ids of aggregates with events of `topics` after notification `position`, and the
        new position."""
        head = self.recorder.max_notification_id() or 0  # commit order = id order (its lock)
        ids: dict[UUID, None] = {}
        while page := self.recorder.select_notifications(position + 1, 1000, stop=head,
                                                         topics=topics):
            ids.update(dict.fromkeys(n.originator_id for n in page))
            position = page[-1].id
        return list(ids), max(position, head)

    # -- clinics and campaigns (§1, §2) -----------------------------------------------
    def apply_clinic(self, settings: ClinicSettings) -> str:
        """Register a clinic or record its changed settings: `registered`, `revised` or
        `unchanged`. Raises `InvalidClinic`."""
        try:
            clinic: Clinic = self.repository.get(clinic_id_of(settings.clinic_id))
            outcome = "revised" if clinic.revise(settings) else "unchanged"
        except AggregateNotFoundError:
            clinic, outcome = Clinic.register(settings), "registered"
        self.save(clinic)
        self.campaigns.put_clinic(clinic)
        return outcome

    def apply_campaign(self, definition: CampaignDefinition) -> tuple[Campaign, str]:
        """Record a campaign file: a new campaign (`defined`, status draft), a new version
        of a changed one (`revised`, §2: enrollments in flight keep theirs) or nothing
        (`unchanged`). Raises `InvalidCampaign`."""
        try:
            campaign: Campaign = self.repository.get(definition.id)
            outcome = "revised" if campaign.revise(definition) else "unchanged"
        except AggregateNotFoundError:
            campaign, outcome = Campaign.define(definition), "defined"
        self.save(campaign)
        self.campaigns.put(campaign)
        return campaign, outcome

    def change_status(self, campaign_id: UUID, action: str, at: datetime) -> bool:
        """`activate`, `pause`, `resume` or `archive` a campaign at `at` (§2 lifecycle);
        returns whether its status changed. Every process sees it within a second, and the
        timer service holds or releases the campaign's due steps in the same transaction.
        Raises `UnknownCampaign`, `InvalidCampaign`, `ValueError` (unknown action)."""
        try:
            campaign: Campaign = self.repository.get(campaign_id)
        except AggregateNotFoundError:
            raise UnknownCampaign(f"no campaign {campaign_id}") from None
        match action:
            case "activate":
                changed = campaign.activate()
            case "pause":
                changed = campaign.pause(at)
            case "resume":
                changed = campaign.resume(at)
            case "archive":
                changed = campaign.archive(at)
            case _:
                raise ValueError(f"unknown lifecycle action {action!r}")
        effects = InlineEffects(campaign_states=[CampaignState(campaign.id, campaign.status, at)])
        self.save_with([campaign], effects if changed else InlineEffects())
        self.campaigns.put(campaign)
        return changed

    def define_campaign(self, definition: CampaignDefinition, activate: bool = True) -> UUID:
        """Define (or revise) and optionally activate a campaign (tests and tools)."""
        campaign, _ = self.apply_campaign(definition)
        if activate:
            self.change_status(campaign.id, "activate", datetime.now(UTC))
        return campaign.id

    def migrate(self, campaign_id: UUID, to_version: int, step_map: dict[str, str],
                at: datetime, page: int = 500) -> int:
        """Move the campaign's active enrollments to version `to_version` (§2, explicit
        migration): each records `Migrated` and its pending step is re-timed in the new
        version. Returns how many moved. Raises `UnknownCampaign`, `InvalidCampaign` (a
        pending step the new version lacks and `step_map` does not map): nothing moves."""
        target = self.campaigns.get(campaign_id, to_version)
        ids = self.query(lambda cur: active_enrollments.of_campaign(cur, campaign_id))
        names = {s.name for s in target.steps}
        for start in range(0, len(ids), page):  # all checked before any moves
            for e in self.load_aggregates(ids[start:start + page]).values():
                if (isinstance(e, Enrollment) and e.is_active and e.campaign_version != to_version
                        and step_map.get(e.pending_step, e.pending_step) not in names):
                    e.migrate(target, step_map, at, "check")  # raises, naming the step
        moved = 0
        for start in range(0, len(ids), page):
            uow = self.unit_of_work()
            uow.prefetch(ids[start:start + page])
            for i in ids[start:start + page]:
                e = uow.get(i)
                if e is not None:
                    moved += e.migrate(target, step_map, at, "migrate")
            uow.commit()
        return moved

    # -- enrollments by request (the HTTP API, §3) -----------------------------------
    def enroll(self, clinic_id: str, campaign_id: UUID, patient_id: str, at: datetime,
               cause: str, *, appointment_id: str | None = None,
               dates: dict[str, datetime] | None = None,
               attributes: dict[str, Any] | None = None) -> tuple[Enrollment, bool]:
        """Enroll one patient into an active campaign of their clinic at `at` (§3), as a
        trigger would: the subject is `appointment_id` for an appointment campaign, else the
        patient; `dates` are its wait-until anchors (UTC). Idempotent: the enrollment id comes
        from the campaign and subject, so the same request returns the same enrollment
        (`created` False). Returns `(enrollment, created)`. Raises `UnknownCampaign` (none of
        this clinic's), `Conflict` (not active; the subject enrolled for another patient),
        `ValueError` (an appointment campaign without `appointment_id`)."""
        campaign = self.campaigns.get(campaign_id)
        if campaign.clinic_id != clinic_id:
            raise UnknownCampaign(f"no campaign {campaign_id}")
        if campaign.subject != "appointment":
            subject = patient_id
        elif appointment_id:
            subject = appointment_id
        else:
            raise ValueError("this campaign's subject is an appointment: give appointment_id")
        eid = enrollment_id(campaign.id, subject)
        uow = self.unit_of_work()
        uow.prefetch([eid], [(clinic_id, patient_id)])
        found = uow.get(eid)
        if found is not None:
            if found.patient_id != patient_id:
                raise Conflict(f"{subject!r} is enrolled for another patient")
            return found, False
        if self.campaigns.status(campaign_id, at) != CampaignStatus.ACTIVE:
            raise Conflict(f"campaign {campaign.name!r} is not active")
        patient = uow.patient(clinic_id, patient_id)
        enrollment = Enrollment.enroll(campaign, patient_id=patient_id, subject=subject, at=at,
                                       cause=cause, dates=dict(dates or {}),
                                       opt_outs=patient.opt_outs if patient else (),
                                       attributes=attributes)
        uow.add(enrollment)
        uow.commit()
        return enrollment, True

    def unenroll(self, clinic_id: str, eid: UUID, at: datetime, cause: str) -> bool:
        """Stop an active enrollment by request (§4 reason `manual`); returns whether it was
        active. Raises `UnknownEnrollment` (none of this clinic's)."""
        uow = self.unit_of_work()
        enrollment = uow.get(eid)
        if enrollment is None or enrollment.clinic_id != clinic_id:
            raise UnknownEnrollment(f"no enrollment {eid}")
        if not enrollment.is_active:
            return False
        uow.catch_up(enrollment, at)
        if enrollment.is_active:
            enrollment.stop(uow.campaign_of(enrollment), StopReason.MANUAL, at, cause)
        uow.commit()
        return True

    def history(self, eid: UUID, until: datetime | None = None,
                ) -> tuple[list[Any], Enrollment | None]:
        """The enrollment's domain events in order, and the state they produce; with
        `until`, only the events that happened at or before it (event time, UTC, §8 time
        travel). `(events, None)` when no event qualifies."""
        state: Any = None
        events = []
        for stored in self.recorder.select_events_of([eid]):  # type: ignore[attr-defined]
            event = self.mapper.to_domain_event(stored)
            if until is not None and event_time(event) > until:
                break
            events.append(event)
            state = event.mutate(state)
        return events, state if isinstance(state, Enrollment) else None

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
            _fire(uow, enrollment, r.message)
        uow.commit()
        return uow

    def handle_receipts(self, consumer: str,
                        batch: Sequence[ConsumedRecord[DeliveryReceiptV1]]) -> UnitOfWork:
        """Record gateways' delivery receipts on their enrollments (§6): each outcome of a
        step once; a hard bounce invalidates the patient's contact point for that channel.
        A receipt for another clinic or for no enrollment is dead-lettered (§1)."""
        uow = self.unit_of_work()
        fresh = uow.fresh(consumer, batch)
        uow.prefetch(r.message.enrollment_id for r in fresh if r.message is not None)
        for r in fresh:
            receipt = r.message
            enrollment = uow.get(receipt.enrollment_id) if receipt is not None else None
            reason = r.error or _refusal(receipt, enrollment)
            if reason is not None or receipt is None or enrollment is None:
                uow.dead_letter(consumer, r, reason or "no message")
                continue
            enrollment.record_receipt(uow.campaign_of(enrollment), receipt.step,
                                      receipt.outcome, receipt.at, receipt.idempotency_key,
                                      receipt.error)
            if receipt.outcome == "bounced" and receipt.permanent:
                uow.patient_or_new(receipt.clinic_id, receipt.patient_id).invalidate_contact(
                    receipt.channel, receipt.at, receipt.error or "hard bounce")
        uow.commit()
        return uow

    # -- following the log -------------------------------------------------------------
    def notifications(self, after: int, limit: int, topics: Sequence[str] = (),
                      stop: int | None = None) -> list[Notification]:
        """Up to `limit` notifications with ids in (after, stop], of `topics` if given."""
        return list(self.recorder.select_notifications(after + 1, limit, stop=stop,
                                                       topics=list(topics)))


class UnknownEnrollment(LookupError):
    """No enrollment with this id (for this clinic)."""


class Conflict(Exception):
    """A request that contradicts the current state (HTTP 409)."""


def event_time(event: Any) -> datetime:
    """When a domain event happened (its `at`, UTC); its recording time if it has none."""
    at = getattr(event, "at", None)
    return at if isinstance(at, datetime) else event.timestamp  # type: ignore[no-any-return]


def _fire(uow: UnitOfWork, enrollment: Enrollment, due: StepDueV1) -> None:
    """Fire a due step as its campaign's status says (§2): held while paused (the timer
    is re-armed and fires on resume), the enrollment stopped when archived."""
    at = due.held_until or due.due_at
    campaign = uow.campaign_of(enrollment)
    status = uow.campaigns.status(enrollment.campaign_id, at)
    if status == CampaignStatus.PAUSED:
        if enrollment.pending_index == due.step_index and enrollment.pending_due == due.due_at:
            uow.hold(enrollment)
    elif status == CampaignStatus.ARCHIVED:
        enrollment.stop(campaign, StopReason.CAMPAIGN_ARCHIVED, at, "archive")
    else:
        enrollment.fire_step(campaign, due.step_index, due.due_at, due.held_until)


def _refusal(due: StepDueV1 | DeliveryReceiptV1 | None,
             enrollment: Enrollment | None) -> str | None:
    """Why a well-formed `step.due` or receipt cannot apply, if it cannot (§1 tenancy)."""
    if due is None:
        return None
    if enrollment is None:
        return f"unknown enrollment {due.enrollment_id}"
    if enrollment.clinic_id != due.clinic_id:
        return f"enrollment {due.enrollment_id} is not of clinic {due.clinic_id!r}"
    return None
