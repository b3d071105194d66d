"""One batch of consumed records → one transaction: events, inline rows, positions.

Aggregates are loaded in bulk (one query for the whole batch), changed in memory, and
saved together with the consumer's new positions (STYLE §3/§8; NOTES: batching many
aggregates into one save is what makes the event store fast).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from uuid import UUID

from domain.campaign import CampaignDefinition
from domain.enrollment import Enrollment
from domain.patient import Patient, patient_id_of
from projections import active_enrollments
from projections.active_enrollments import Active
from projections.dead_letters import DeadLetter
from projections.inline import InlineEffects
from projections.positions import Advance
from projections.timers import Timer

if TYPE_CHECKING:
    from services.application import DripApplication


class UnitOfWork:
    """Loaded enrollments and patients, the patients' active enrollments, what to write."""

    def __init__(self, app: DripApplication) -> None:
        self.app = app
        self.enrollments: dict[UUID, Enrollment | None] = {}
        self.patients: dict[UUID, Patient | None] = {}
        self.active: dict[tuple[str, str], set[UUID]] = {}
        self.effects = InlineEffects()
        self.recorded = 0

    # -- loading -----------------------------------------------------------------------
    def prefetch(self, ids: Iterable[UUID], patients: Iterable[tuple[str, str]] = ()) -> None:
        """Load these enrollments and the active enrollments of these patients at once."""
        patients = [p for p in set(patients) if p not in self.active]
        if patients:
            with self.app.recorder.datastore.transaction(commit=False) as cur:
                self.active.update(active_enrollments.of_patients(cur, patients))
        wanted = {i for i in ids if i not in self.enrollments}
        wanted |= {i for p in patients for i in self.active[p] if i not in self.enrollments}
        people = {patient_id_of(*p) for p in patients} - set(self.patients)
        loaded = self.app.load_aggregates(wanted | people)
        for i in wanted:
            self.enrollments[i] = loaded.get(i)
        for i in people:
            self.patients[i] = loaded.get(i)

    def get(self, enrollment_id: UUID) -> Enrollment | None:
        if enrollment_id not in self.enrollments:
            self.prefetch([enrollment_id])
        return self.enrollments[enrollment_id]

    def patient(self, clinic_id: str, patient_id: str) -> Patient | None:
        """The patient's aggregate, or None when drip has recorded nothing about them."""
        pid = patient_id_of(clinic_id, patient_id)
        if pid not in self.patients:
            self.patients[pid] = self.app.load_aggregates([pid]).get(pid)
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
        return self.app.campaign(enrollment.campaign_id)

    def dead_letter(self, consumer: str, topic: str, partition: int, offset: int,
                    key: bytes | None, value: bytes | None, reason: str) -> None:
        self.effects.dead_letters.append(
            DeadLetter(consumer, topic, partition, offset, key, value, reason))

    def advance(self, consumer: str, topic: str, partition: int, expected: int | None,
                position: int) -> None:
        self.effects.advances.append(Advance(consumer, topic, partition, expected, position))

    # -- saving ------------------------------------------------------------------------
    def commit(self) -> int:
        """Save every changed enrollment with the inline rows in one transaction.

        Returns how many domain events were recorded. Raises eventsourcing's
        `IntegrityError` when another writer changed an enrollment or a position first.
        """
        changed = [e for e in self.enrollments.values()
                   if e is not None and e.pending_events]
        for e in changed:
            self._mirror(e)
        people = [p for p in self.patients.values() if p is not None and p.pending_events]
        n_events = sum(len(a.pending_events) for a in [*changed, *people])
        self.app.save(*changed, *people, effects=self.effects)
        self.recorded = n_events
        return n_events

    def _mirror(self, e: Enrollment) -> None:
        """The inline rows that follow an enrollment's new state."""
        if e.pending_due is not None:
            self.effects.timers.append(
                Timer(e.id, e.clinic_id, e.patient_id, e.next_index, e.pending_due))
        else:
            self.effects.timers_done.append(e.id)
        if e.is_active:
            self.effects.active.append(
                Active(e.id, e.clinic_id, e.patient_id, e.campaign_id, e.started_at))
        else:
            self.effects.inactive.append(e.id)
