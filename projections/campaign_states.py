"""Campaign status for the timer service (§2 pause): an inline read model, written in the
same transaction as the campaign's lifecycle events.

`campaign_states(campaign_id, status, paused_at, resumed_at)`: the timer service does not
claim the timers of a `paused` campaign, and fires a timer that fell due before the last
resume at the resume time (the step was held). Campaigns with no row are active.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import Cursor

from projections import timers

DDL = """
CREATE TABLE IF NOT EXISTS campaign_states (
    campaign_id uuid PRIMARY KEY,
    status      text NOT NULL,
    paused_at   timestamptz,
    resumed_at  timestamptz
);
"""


@dataclass(frozen=True)
class CampaignState:
    """A campaign's status after a lifecycle event at `at` (UTC)."""

    campaign_id: UUID
    status: str
    at: datetime


def write(cur: Cursor, states: Iterable[CampaignState]) -> None:
    """Record each new status; a resume wakes the timer service (held steps are due)."""
    for s in states:
        cur.execute(
            "INSERT INTO campaign_states AS c (campaign_id, status, paused_at, resumed_at)"
            " VALUES (%(id)s, %(status)s,"
            " CASE WHEN %(status)s = 'paused' THEN %(at)s::timestamptz END, NULL)"
            " ON CONFLICT (campaign_id) DO UPDATE SET status = EXCLUDED.status,"
            " paused_at = CASE WHEN %(status)s = 'paused' THEN %(at)s::timestamptz"
            "  ELSE c.paused_at END,"
            " resumed_at = CASE WHEN %(status)s = 'active' AND c.status = 'paused'"
            "  THEN %(at)s::timestamptz ELSE c.resumed_at END",
            {"id": s.campaign_id, "status": s.status, "at": s.at})
        if s.status != "paused":
            cur.execute(f"NOTIFY {timers.CHANNEL}")
