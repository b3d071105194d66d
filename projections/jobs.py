"""Long requests of the HTTP API as jobs you poll (bulk enrollment, backtests): one row per
job, with its clinic, kind, status (`queued`, `running`, `done`, `failed`), progress
(`done` of `total` items) and result (JSON) or error. Times UTC."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Cursor

from projections.sql import rows

DDL = """
CREATE TABLE IF NOT EXISTS api_jobs (
    job_id      uuid PRIMARY KEY,
    clinic_id   text NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL,
    done        bigint NOT NULL DEFAULT 0,
    total       bigint,
    result      jsonb,
    error       text,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz
);
"""
COLUMNS = ("job_id", "clinic_id", "kind", "status", "done", "total", "result", "error",
           "created_at", "finished_at")


def create(cur: Cursor, job_id: UUID, clinic_id: str, kind: str, total: int | None,
           at: datetime) -> None:
    cur.execute("INSERT INTO api_jobs (job_id, clinic_id, kind, status, total, created_at)"
                " VALUES (%s, %s, %s, 'queued', %s, %s)", (job_id, clinic_id, kind, total, at))


def progress(cur: Cursor, job_id: UUID, done: int, total: int | None = None) -> None:
    cur.execute("UPDATE api_jobs SET status = 'running', done = %s,"
                " total = coalesce(%s, total) WHERE job_id = %s", (done, total, job_id))


def finish(cur: Cursor, job_id: UUID, at: datetime, result: Any = None,
           error: str | None = None) -> None:
    cur.execute("UPDATE api_jobs SET status = %s, result = %s, error = %s, finished_at = %s"
                " WHERE job_id = %s", ("failed" if error else "done",
                                       None if result is None else json.dumps(result, default=str),
                                       error, at, job_id))


def get(cur: Cursor, job_id: UUID, clinic_id: str) -> dict[str, Any] | None:
    """The job, if it is this clinic's."""
    cur.execute(f"SELECT {', '.join(COLUMNS)} FROM api_jobs WHERE job_id = %s AND clinic_id = %s",
                (job_id, clinic_id))
    found = rows(cur)
    return dict(zip(COLUMNS, found[0], strict=True)) if found else None
