"""Log positions: how far each follower of the event log (projector, dispatcher) has read,
by notification id (§7 "replayable, exactly-once"). Kafka offsets are the other kind of
position, in `consumer_positions`.

`follow_once` reads the notification log after a follower's position in pages, hands each
page to `apply(cur, notifications)`, and moves the position in the same transaction as
what `apply` wrote. Pages (not single events) make a rebuild of 10^6 events quick.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import Notification
from psycopg import Connection, Cursor

from projections.sql import rows

DDL = """
CREATE TABLE IF NOT EXISTS log_positions (
    name     text   PRIMARY KEY,
    position bigint NOT NULL
);
"""

Reader = Callable[[int, int], Sequence[Notification]]


def lock_position(cur: Cursor, name: str) -> int:
    """Follower `name`'s position (0 at first), locked until the transaction ends, so two
    followers of one name never handle the same page."""
    cur.execute("INSERT INTO log_positions VALUES (%s, 0) ON CONFLICT DO NOTHING", (name,))
    cur.execute("SELECT position FROM log_positions WHERE name = %s FOR UPDATE", (name,))
    return rows(cur)[0][0]


def set_position(cur: Cursor, name: str, value: int) -> None:
    cur.execute("INSERT INTO log_positions VALUES (%s, %s) ON CONFLICT (name)"
                " DO UPDATE SET position = EXCLUDED.position", (name, value))


def follow_once(conn: Connection[Any], name: str, read: Reader,
                apply: Callable[[Cursor, Sequence[Notification]], None], limit: int) -> int:
    """Apply the next page after `name`'s position, and move the position, in one
    transaction; returns how many notifications the page held."""
    with conn.transaction(), conn.cursor() as cur:
        after = lock_position(cur, name)
        page = read(after, limit)
        if page:
            apply(cur, page)
            set_position(cur, name, page[-1].id)
        return len(page)


def followed(cur: Cursor, name: str, events_table: str, topic: str) -> int:
    """How many events of `topic` lie at or before follower `name`'s position."""
    cur.execute(f"SELECT count(*) FROM {events_table} WHERE topic = %s AND notification_id <="
                " coalesce((SELECT position FROM log_positions WHERE name = %s), 0)",
                (topic, name))
    return rows(cur)[0][0]


def all_positions(cur: Cursor, events_table: str = "drip_events") -> tuple[int, list[tuple[str, int]]]:
    """The log's head (largest notification id, 0 when empty) and every follower's
    `(name, position)`: how far each is behind (§8 metrics)."""
    cur.execute(f"SELECT coalesce(max(notification_id), 0) FROM {events_table}")
    head = rows(cur)[0][0]
    cur.execute("SELECT name, position FROM log_positions ORDER BY name")
    return head, rows(cur)
