"""eventsourcing's PostgreSQL recorder, extended to write inline read models in the
events' own transaction, and to load many aggregates' events in one query."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor, sql
from psycopg.rows import DictRow

from projections import analytics
from projections.inline import InlineEffects
from projections.schema import DDL
from projections.sql import columns

STORED_EVENT_COLUMNS = ("originator_id", "originator_version", "topic", "state")


class DripRecorder(PostgresApplicationRecorder):
    """Writes `effects=InlineEffects(...)` passed to `Application.save` atomically."""

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=True) as cur:
            cur.execute(DDL + analytics.VIEWS)

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> None:
        effects: InlineEffects | None = kwargs.get("effects")
        if effects is not None:
            effects.write(curs)
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent],
                              **kwargs: Any) -> None:
        """eventsourcing's insert, with four plain arrays instead of one array of a
        composite type: psycopg dumps those much faster (same rows, same locking)."""
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(self._columnar_insert, columns(stored_events, STORED_EVENT_COLUMNS))

    @cached_property
    def _columnar_insert(self) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[])"
            " RETURNING notification_id").format(
                schema=sql.Identifier(self.datastore.schema),
                table=sql.Identifier(self.events_table_name))

    def select_events_of(self, ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every stored event of the given aggregates, by aggregate then version."""
        if not ids:
            return []
        query = (f"SELECT originator_id, originator_version, topic, state FROM "
                 f"{self.events_table_name} WHERE originator_id = ANY(%s)"
                 f" ORDER BY originator_id, originator_version")
        with self.datastore.transaction(commit=False) as cur:
            cur.execute(query, (list(ids),))
            return [StoredEvent(originator_id=r["originator_id"],
                                originator_version=r["originator_version"],
                                topic=r["topic"], state=bytes(r["state"]))
                    for r in cur.fetchall()]
