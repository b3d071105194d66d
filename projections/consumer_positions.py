"""Consumer positions: the Kafka offset each consumer group last handled, per partition.

Written in the same transaction as the domain events the records produced (Kafka's own
advice: store the offset where the output is), so a redelivered record is recognised and
skipped: consumption is effectively-once. The advance is a compare-and-set: a consumer
that lost its partition in a rebalance cannot commit over the new owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import Cursor

from projections.sql import rows as _rows

DDL = """
CREATE TABLE IF NOT EXISTS consumer_positions (
    consumer  text   NOT NULL,
    topic     text   NOT NULL,
    partition int    NOT NULL,
    position  bigint NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);
CREATE OR REPLACE FUNCTION drip_advance_position(
    c text, t text, p int, expected bigint, new_position bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF expected IS NULL THEN
        INSERT INTO consumer_positions VALUES (c, t, p, new_position);
    ELSE
        UPDATE consumer_positions SET position = new_position
         WHERE consumer = c AND topic = t AND partition = p AND position = expected;
        IF NOT FOUND THEN
            RAISE unique_violation USING MESSAGE = format(
                'position of %s on %s[%s] moved from %s', c, t, p, expected);
        END IF;
    END IF;
END $$;
"""


@dataclass(frozen=True)
class Advance:
    """Move `consumer`'s position on `topic[partition]` from `expected` to `position`."""

    consumer: str
    topic: str
    partition: int
    expected: int | None
    position: int


def load(cur: Cursor, consumer: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The last handled offset of each (topic, partition) that has one."""
    pairs = sorted(set(partitions))
    cur.execute(
        "SELECT topic, partition, position FROM consumer_positions WHERE consumer = %s"
        " AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))",
        (consumer, [t for t, _ in pairs], [p for _, p in pairs]))
    return {(r[0], r[1]): r[2] for r in _rows(cur)}


def write(cur: Cursor, advances: Iterable[Advance]) -> None:
    rows = [(a.consumer, a.topic, a.partition, a.expected, a.position) for a in advances]
    if rows:
        cur.executemany("SELECT drip_advance_position(%s, %s, %s, %s, %s)", rows)


def all_positions(cur: Cursor, consumer: str) -> dict[tuple[str, int], int]:
    cur.execute("SELECT topic, partition, position FROM consumer_positions WHERE consumer = %s",
                (consumer,))
    return {(r[0], r[1]): r[2] for r in _rows(cur)}

