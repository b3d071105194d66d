"""Every table drip owns, created idempotently, and the reset `drip demo` starts from."""

from __future__ import annotations

from psycopg import Connection

from projections import api_keys, inline, jobs, log_positions, registry

DDL = inline.DDL + log_positions.DDL + api_keys.DDL + jobs.DDL + "".join(p.ddl for p in registry.PROJECTIONS)


def reset(conn: Connection) -> None:
    """Drop everything in the `public` schema: the event store and every read model."""
    with conn.transaction():
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
