"""Dead letters (§8): every record a consumer refused, with the reason, for operators.

A dead letter is written in the refusing batch's own transaction (with the consumer's
position), so it is recorded once however often the record is redelivered, and never
lost: the table is the outbox of the dead-letter topic. The relay claims the rows not yet
published, publishes them unchanged (key, value, headers) and marks them published in
the same transaction as the claim (services/entrypoints/relays.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import Cursor

from projections.sql import add_column
from projections.sql import rows as _rows

DDL = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id            bigserial   UNIQUE,
    consumer      text        NOT NULL,
    topic         text        NOT NULL,
    partition     int         NOT NULL,
    "offset"      bigint      NOT NULL,
    key           bytea,
    value         bytea,
    header_keys   text[]      NOT NULL DEFAULT '{}',
    header_values bytea[]     NOT NULL DEFAULT '{}',
    reason        text        NOT NULL,
    published_at  timestamptz,
    PRIMARY KEY (topic, partition, "offset", consumer)
);
CREATE INDEX IF NOT EXISTS dead_letters_unpublished ON dead_letters (id)
    WHERE published_at IS NULL;
""" + (add_column("dead_letters", "created_at", "timestamptz DEFAULT now()")
       + add_column("dead_letters", "redriven_at", "timestamptz")
       + add_column("dead_letters", "redriven_to", "text"))

CHANNEL = "drip_dead_letters"
"""NOTIFY channel: written dead letters wake the relay that publishes them."""

COLUMNS = ('consumer, topic, partition, "offset", key, value, header_keys, header_values,'
           " reason")


@dataclass(frozen=True)
class DeadLetter:
    """The record at `topic[partition]@offset` (its key, value and headers as received),
    refused by `consumer` for `reason`."""

    consumer: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reason: str


def write(cur: Cursor, letters: Iterable[DeadLetter]) -> None:
    rows = [(d.consumer, d.topic, d.partition, d.offset, d.key, d.value,
             [k for k, _ in d.headers], [v for _, v in d.headers], d.reason) for d in letters]
    if rows:
        cur.executemany(f"INSERT INTO dead_letters ({COLUMNS}) VALUES"
                        " (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)
        cur.execute(f"NOTIFY {CHANNEL}")


def _letter(r: tuple) -> DeadLetter:
    headers = tuple(zip(r[6], (bytes(v) for v in r[7]), strict=True))
    return DeadLetter(*r[:4], _bytes(r[4]), _bytes(r[5]), headers, r[8])


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return None if value is None else bytes(value)


def claim_unpublished(cur: Cursor, limit: int) -> list[tuple[int, DeadLetter]]:
    """Up to `limit` dead letters not yet on the topic, oldest first, locked for this claim."""
    cur.execute(f"SELECT id, {COLUMNS} FROM dead_letters WHERE published_at IS NULL"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))
    return [(r[0], _letter(r[1:])) for r in _rows(cur)]


def mark_published(cur: Cursor, ids: list[int], at: datetime) -> None:
    cur.execute("UPDATE dead_letters SET published_at = %s WHERE id = ANY(%s)", (at, ids))


def count(cur: Cursor) -> int:
    cur.execute("SELECT count(*) FROM dead_letters")
    return _rows(cur)[0][0]


def counts(cur: Cursor) -> list[tuple[str, str, int]]:
    """`(consumer, topic, n)` of every dead letter (for metrics: few label values)."""
    cur.execute("SELECT consumer, topic, count(*) FROM dead_letters GROUP BY 1, 2 ORDER BY 1, 2")
    return _rows(cur)


def listing(cur: Cursor, limit: int = 100) -> list[DeadLetter]:
    cur.execute(f"SELECT {COLUMNS} FROM dead_letters ORDER BY topic, partition, \"offset\""
                " LIMIT %s", (limit,))
    return [_letter(r) for r in _rows(cur)]


@dataclass(frozen=True)
class Entry:
    """A dead letter as operators see it (§8): its id, the record, when it was refused and,
    once redriven, when and to which `topic[partition]@offset`."""

    id: int
    letter: DeadLetter
    created_at: datetime | None
    redriven_at: datetime | None
    redriven_to: str | None

    @property
    def clinic_id(self) -> str | None:
        """The clinic the record names (`clinic_id` or `clinicid` of its JSON), if any."""
        try:
            doc = json.loads(self.letter.value or b"")
        except ValueError:
            return None
        found = doc.get("clinic_id") or doc.get("clinicid") if isinstance(doc, dict) else None
        return str(found) if found is not None else None


def entries(cur: Cursor, *, ids: Sequence[int] = (), reason: str | None = None,
            pending_only: bool = False, limit: int = 1000) -> list[Entry]:
    """Dead letters by id (oldest first): these `ids`, or those whose reason contains
    `reason` (case-insensitive), only the ones not redriven yet with `pending_only`."""
    cur.execute(
        f"SELECT id, {COLUMNS}, created_at, redriven_at, redriven_to FROM dead_letters"
        " WHERE (cardinality(%(ids)s::bigint[]) = 0 OR id = ANY(%(ids)s))"
        " AND (%(reason)s::text IS NULL OR reason ILIKE '%%' || %(reason)s || '%%')"
        " AND (NOT %(pending)s OR redriven_at IS NULL) ORDER BY id LIMIT %(limit)s",
        {"ids": list(ids), "reason": reason, "pending": pending_only, "limit": limit})
    return [Entry(r[0], _letter(r[1:10]), r[10], r[11], r[12]) for r in _rows(cur)]


def mark_redriven(cur: Cursor, redriven: Sequence[tuple[int, str]], at: datetime) -> None:
    """Record that dead letter `id` was republished, as `topic[partition]@offset`."""
    cur.executemany("UPDATE dead_letters SET redriven_at = %s, redriven_to = %s WHERE id = %s",
                    [(at, to, i) for i, to in redriven])
