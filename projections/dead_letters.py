"""Dead letters (§8): every record a consumer refused, with the reason, for operators.

Written with the consumer's position, so a refused record is counted once however often
it is redelivered; the record itself also goes to the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import Cursor

from projections.sql import rows as _rows

DDL = """
CREATE TABLE IF NOT EXISTS dead_letters (
    consumer  text   NOT NULL,
    topic     text   NOT NULL,
    partition int    NOT NULL,
    "offset"  bigint NOT NULL,
    key       bytea,
    value     bytea,
    reason    text   NOT NULL,
    PRIMARY KEY (topic, partition, "offset", consumer)
);
"""


@dataclass(frozen=True)
class DeadLetter:
    """The record at `topic[partition]@offset`, refused by `consumer` for `reason`."""

    consumer: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str


def write(cur: Cursor, letters: Iterable[DeadLetter]) -> None:
    rows = [(d.consumer, d.topic, d.partition, d.offset, d.key, d.value, d.reason)
            for d in letters]
    if rows:
        cur.executemany("INSERT INTO dead_letters VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING", rows)


def count(cur: Cursor) -> int:
    cur.execute("SELECT count(*) FROM dead_letters")
    return _rows(cur)[0][0]


def listing(cur: Cursor, limit: int = 100) -> list[DeadLetter]:
    cur.execute('SELECT consumer, topic, partition, "offset", key, value, reason'
                ' FROM dead_letters ORDER BY topic, partition, "offset" LIMIT %s', (limit,))
    return [DeadLetter(*r[:4], bytes(r[4]) if r[4] else None,
                       bytes(r[5]) if r[5] else None, r[6]) for r in _rows(cur)]
