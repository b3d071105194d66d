"""The Patient aggregate: what drip must remember about a patient across enrollments —
their opt-outs (§4 `opted_out`, §5 consent), so an enrollment that starts after an
opt-out honours it too; their details and contact points (§6: gateways read them, never
the Kafka key); and the contact points a hard bounce proved invalid."""

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
        self.details: dict[str, str] = {}
        self.invalid_contacts: list[str] = []
        self.causes: set[str] = set()  # upstream events applied: each applies once

    @staticmethod
    def create_id(clinic_id: str, patient_id: str) -> UUID:
        return patient_id_of(clinic_id, patient_id)

    def opt_out(self, channel: str | None, at: datetime, cause: str) -> bool:
        """Record an opt-out of `channel` (None: of everything) at `at`; a repeat is a no-op."""
        if cause in self.causes or any(c == channel and a == at for c, a, _ in self.opt_outs):
            return False
        self._opted_out(channel, at, cause)
        return True

    @event("OptedOut")
    def _opted_out(self, channel: str | None, at: datetime, cause: str) -> None:
        self.opt_outs = sorted([*self.opt_outs, (channel, at, cause)], key=lambda o: o[1])
        self.causes.add(cause)

    CONTACT_OF = {"email": "email", "sms": "phone", "whatsapp": "whatsapp"}
    """The detail that is a channel's contact point."""

    def update_details(self, details: dict[str, str], at: datetime, cause: str) -> bool:
        """Record the given details (first_name, email, phone…); returns whether any
        changed. A changed contact point is valid again."""
        changed = {k: v for k, v in details.items() if self.details.get(k) != v}
        if not changed or cause in self.causes:
            return False
        self._details_updated(changed, at, cause)
        return True

    @event("DetailsUpdated")
    def _details_updated(self, details: dict[str, str], at: datetime, cause: str) -> None:
        self.details = {**self.details, **details}
        self.causes.add(cause)
        renewed = {c for c, field in self.CONTACT_OF.items() if field in details}
        self.invalid_contacts = [c for c in self.invalid_contacts if c not in renewed]

    def contact(self, channel: str) -> str | None:
        """The contact point for `channel`, None when unknown or proved invalid."""
        field = self.CONTACT_OF.get(channel)
        if field is None or channel in self.invalid_contacts:
            return None
        return self.details.get(field)

    def invalidate_contact(self, channel: str, at: datetime, reason: str) -> bool:
        """A hard bounce (§6): the channel's contact point is invalid until it changes."""
        if channel in self.invalid_contacts:
            return False
        self._contact_invalidated(channel, at, reason)
        return True

    @event("ContactInvalidated")
    def _contact_invalidated(self, channel: str, at: datetime, reason: str) -> None:
        self.invalid_contacts = [*self.invalid_contacts, channel]
