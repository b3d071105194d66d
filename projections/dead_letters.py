"""Dead letters (§8): every record a consumer refused, with the reason, for operators.

A dead letter is written in the refusing batch's own transaction (with the consumer's
position), so it is recorded once however often the record is redelivered, and never
lost: the table is the outbox of the dead-letter topic. The relay claims the rows not yet
published, publishes them unchanged (key, value, headers) and marks them published in
the same transaction as the claim (services/entrypoints/relays.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from psycopg import Cursor

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
"""

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


def listing(cur: Cursor, limit: int = 100) -> list[DeadLetter]:
    cur.execute(f"SELECT {COLUMNS} FROM dead_letters ORDER BY topic, partition, \"offset\""
                " LIMIT %s", (limit,))
    return [_letter(r) for r in _rows(cur)]
