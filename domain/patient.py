"""The Patient aggregate: what drip must remember about a patient across enrollments —
their opt-outs (§4 `opted_out`, §5 consent), so an enrollment that starts after an
opt-out honours it too."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event


def patient_id_of(clinic_id: str, patient_id: str) -> UUID:
    """The aggregate id of a clinic's patient (§1: patients belong to one clinic)."""
    return uuid5(NAMESPACE_URL, f"drip:patient:{clinic_id}:{patient_id}")


class Patient(Aggregate):
    """`opt_outs`: `(channel or None for all, at, cause)` in the order they were recorded."""

    @event("Registered")
    def __init__(self, clinic_id: str, patient_id: str) -> None:
        self.clinic_id, self.patient_id = clinic_id, patient_id
        self.opt_outs: list[tuple[str | None, datetime, str]] = []

    @staticmethod
    def create_id(clinic_id: str, patient_id: str) -> UUID:
        return patient_id_of(clinic_id, patient_id)

    def opt_out(self, channel: str | None, at: datetime, cause: str) -> bool:
        """Record an opt-out of `channel` (None: of everything) at `at`; a repeat is a no-op."""
        if any(c == channel and a == at for c, a, _ in self.opt_outs):
            return False
        self._opted_out(channel, at, cause)
        return True

    @event("OptedOut")
    def _opted_out(self, channel: str | None, at: datetime, cause: str) -> None:
        self.opt_outs = sorted([*self.opt_outs, (channel, at, cause)], key=lambda o: o[1])
