"""One batch of consumed records → one transaction: events, inline rows, positions.

Aggregates are loaded in bulk (one query for the whole batch), changed in memory, and
saved together with the consumer's new positions (STYLE §3/§8; NOTES: batching many
aggregates into one save is what makes the event store fast). Records at or below the
consumer's recorded position are skipped, so a redelivery changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate
from psycopg import Cursor

from domain.campaign import CampaignDefinition, CampaignStatus
from domain.enrollment import Enrollment
from domain.patient import Patient, patient_id_of
from projections import active_enrollments, consumer_positions
from projections.active_enrollments import Active
from projections.consumer_positions import Advance
from projections.dead_letters import DeadLetter
from projections.inline import InlineEffects
from projections.patients import PatientRow
from projections.timers import Timer
from services.application.catalog import CampaignCatalog
from services.application.records import ConsumedRecord

T = TypeVar("T")
R = TypeVar("R", bound=ConsumedRecord[Any])


class EventStore(Protocol):
    """What a unit of work needs of the event store (the application implements it)."""

    def load_aggregates(self, ids: Iterable[UUID]) -> dict[UUID, Aggregate]: ...

    def save_with(self, aggregates: Sequence[Aggregate], effects: InlineEffects) -> None: ...

    def query(self, read: Callable[[Cursor[Any]], T]) -> T: ...


class UnitOfWork:
    """Loaded enrollments and patients, the patients' active enrollments, what to write."""

    def __init__(self, store: EventStore, campaigns: CampaignCatalog) -> None:
        self.store, self.campaigns = store, campaigns
        self.enrollments: dict[UUID, Enrollment | None] = {}
        self.patients: dict[UUID, Patient | None] = {}
        self.active: dict[tuple[str, str], set[UUID]] = {}
        self.effects = InlineEffects()
        self.recorded = 0

    # -- consuming ---------------------------------------------------------------------
    def fresh(self, consumer: str, batch: Sequence[R]) -> list[R]:
        """The records `consumer` has not handled yet; their positions advance with this
        unit of work (compare-and-set against the positions read here)."""
        known = self.store.query(lambda cur: consumer_positions.load(
            cur, consumer, {(r.topic, r.partition) for r in batch}))
        fresh = [r for r in batch if r.offset > known.get((r.topic, r.partition), -1)]
        last: dict[tuple[str, int], int] = {}
        for r in fresh:
            last[(r.topic, r.partition)] = max(r.offset, last.get((r.topic, r.partition), -1))
        for (topic, partition), offset in sorted(last.items()):
            self.effects.advances.append(Advance(consumer, topic, partition,
                                                 known.get((topic, partition)), offset))
        return fresh

    def dead_letter(self, consumer: str, record: ConsumedRecord[Any], reason: str) -> None:
        """Refuse `record` for `reason`: a `dead_letters` row written in this transaction,
        published to the dead-letter topic by the relay that follows the table (§8)."""
        self.effects.dead_letters.append(DeadLetter(
            consumer, record.topic, record.partition, record.offset, record.key,
            record.value, record.headers, reason))

    # -- loading -----------------------------------------------------------------------
    def prefetch(self, ids: Iterable[UUID], patients: Iterable[tuple[str, str]] = ()) -> None:
        """Load these enrollments and the active enrollments of these patients at once."""
        patients = [p for p in set(patients) if p not in self.active]
        if patients:
            self.active.update(self.store.query(
                lambda cur: active_enrollments.of_patients(cur, patients)))
        wanted = {i for i in ids if i not in self.enrollments}
        wanted |= {i for p in patients for i in self.active[p] if i not in self.enrollments}
        people = {patient_id_of(*p) for p in patients} - set(self.patients)
        loaded = self.store.load_aggregates(wanted | people)
        for i in wanted:
            self.enrollments[i] = loaded.get(i)  # type: ignore[assignment]
        for i in people:
            self.patients[i] = loaded.get(i)  # type: ignore[assignment]

    def get(self, enrollment_id: UUID) -> Enrollment | None:
        if enrollment_id not in self.enrollments:
            self.prefetch([enrollment_id])
        return self.enrollments[enrollment_id]

    def patient(self, clinic_id: str, patient_id: str) -> Patient | None:
        """The patient's aggregate, or None when drip has recorded nothing about them."""
        pid = patient_id_of(clinic_id, patient_id)
        if pid not in self.patients:
            self.patients[pid] = self.store.load_aggregates([pid]).get(pid)  # type: ignore[assignment]
        return self.patients[pid]

    def patient_or_new(self, clinic_id: str, patient_id: str) -> Patient:
        found = self.patient(clinic_id, patient_id)
        if found is None:
            found = self.patients[patient_id_of(clinic_id, patient_id)] = Patient(
                clinic_id, patient_id)
        return found

    def active_of(self, clinic_id: str, patient_id: str) -> list[Enrollment]:
        """The patient's active enrollments, oldest first (deterministic order)."""
        key = (clinic_id, patient_id)
        if key not in self.active:
            self.prefetch((), [key])
        found = [e for i in self.active[key] if (e := self.get(i)) is not None and e.is_active]
        return sorted(found, key=lambda e: (e.started_at, str(e.id)))

    # -- changing ----------------------------------------------------------------------
    def add(self, enrollment: Enrollment) -> None:
        self.enrollments[enrollment.id] = enrollment
        self.active.setdefault((enrollment.clinic_id, enrollment.patient_id), set()).add(
            enrollment.id)

    def campaign_of(self, enrollment: Enrollment) -> CampaignDefinition:
        """The version of its campaign the enrollment runs (§2 versions)."""
        return self.campaigns.get(enrollment.campaign_id, enrollment.campaign_version)

    def catch_up(self, enrollment: Enrollment, until: datetime) -> None:
        """Send the enrollment's steps due before `until`, unless its campaign is paused
        (those steps are held until it resumes, §2)."""
        if self.campaigns.status(enrollment.campaign_id, until) != CampaignStatus.PAUSED:
            enrollment.catch_up(self.campaign_of(enrollment), until)

    def hold(self, enrollment: Enrollment) -> None:
        """Re-arm the enrollment's timer unchanged: its step arrived while the campaign was
        paused, and the timer service fires it again on resume (§2)."""
        self.enrollments[enrollment.id] = enrollment
        self.effects.timers.append(self._timer(enrollment))

    # -- saving ------------------------------------------------------------------------
    def commit(self) -> int:
        """Save every changed aggregate with the inline rows in one transaction.

        Returns how many domain events were recorded. Raises eventsourcing's
        `IntegrityError` when another writer changed an enrollment or a position first.
        """
        changed = [e for e in self.enrollments.values()
                   if e is not None and e.pending_events]
        for e in changed:
            self._mirror(e)
        people = [p for p in self.patients.values() if p is not None and p.pending_events]
        self.effects.patients += [
            PatientRow(p.clinic_id, p.patient_id, p.details, p.invalid_contacts) for p in people
            if any(isinstance(ev, Patient.DetailsUpdated | Patient.ContactInvalidated)
                   for ev in p.pending_events)]
        self.recorded = sum(len(a.pending_events) for a in [*changed, *people])
        self.store.save_with([*changed, *people], self.effects)
        return self.recorded

    @staticmethod
    def _timer(e: Enrollment) -> Timer:
        assert e.pending_due is not None
        return Timer(e.id, e.clinic_id, e.patient_id, e.next_index, e.pending_due, e.campaign_id)

    def _mirror(self, e: Enrollment) -> None:
        """The inline rows that follow an enrollment's new state."""
        if e.pending_due is not None:
            self.effects.timers.append(self._timer(e))
        else:
            self.effects.timers_done.append(e.id)
        if e.is_active:
            self.effects.active.append(
                Active(e.id, e.clinic_id, e.patient_id, e.campaign_id, e.started_at))
        else:
            self.effects.inactive.append(e.id)
