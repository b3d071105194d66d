"""Small helpers shared by the read-model modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from psycopg import Cursor


def rows(cur: Cursor) -> list[tuple]:
    """Fetched rows as tuples, whatever the cursor's row factory (eventsourcing uses dicts)."""
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in cur.fetchall()]


def columns(items: Sequence[Any], names: Sequence[str] | None = None) -> list[list[Any]]:
    """Dataclass instances as one list per field (all fields, or `names`), in order: the
    arrays an `INSERT ... SELECT * FROM unnest(%s::t1[], ...)` takes, one statement per batch."""
    names = names or [f.name for f in fields(items[0])]
    return [[getattr(item, name) for item in items] for name in names]
