"""Small helpers shared by the read-model modules."""

from __future__ import annotations

from psycopg import Cursor


def rows(cur: Cursor) -> list[tuple]:
    """Fetched rows as tuples, whatever the cursor's row factory (eventsourcing uses dicts)."""
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]
