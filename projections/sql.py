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


def add_column(table: str, column: str, sql_type: str) -> str:
    """DDL that adds a column to an existing table only when it is missing: unlike
    `ALTER TABLE … ADD COLUMN IF NOT EXISTS`, it takes no lock when the column is there,
    so a process starting up never blocks the others on a busy table."""
    return (f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns"
            f" WHERE table_schema = current_schema() AND table_name = '{table}'"
            f" AND column_name = '{column}') THEN"
            f" ALTER TABLE {table} ADD COLUMN {column} {sql_type}; END IF; END $$;\n")
