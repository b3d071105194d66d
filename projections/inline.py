"""Inline read models: rows written in the same transaction as the events they follow.

`InlineEffects` travels as a keyword argument of `Application.save(...)` down to the
recorder, which writes it inside the events' transaction (services/recorder.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from psycopg import Cursor

from projections import (
    active_enrollments,
    campaign_states,
    consumer_positions,
    dead_letters,
    gateway_sends,
    patients,
    timers,
)

DDL = (consumer_positions.DDL + timers.DDL + active_enrollments.DDL + dead_letters.DDL
       + campaign_states.DDL + patients.DDL + gateway_sends.DDL)


@dataclass
class InlineEffects:
    """What one unit of work changes besides the event store."""

    advances: list[consumer_positions.Advance] = field(default_factory=list)
    timers: list[timers.Timer] = field(default_factory=list)
    timers_done: list[UUID] = field(default_factory=list)
    active: list[active_enrollments.Active] = field(default_factory=list)
    inactive: list[UUID] = field(default_factory=list)
    dead_letters: list[dead_letters.DeadLetter] = field(default_factory=list)
    campaign_states: list[campaign_states.CampaignState] = field(default_factory=list)
    patients: list[patients.PatientRow] = field(default_factory=list)

    def write(self, cur: Cursor) -> None:
        consumer_positions.write(cur, self.advances)
        timers.write(cur, self.timers, self.timers_done)
        active_enrollments.write(cur, self.active, self.inactive)
        dead_letters.write(cur, self.dead_letters)
        campaign_states.write(cur, self.campaign_states)
        patients.write(cur, self.patients)
