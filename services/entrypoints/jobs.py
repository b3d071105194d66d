"""The API's long requests, run as jobs you poll (`GET /v1/jobs/{id}`; rows in `api_jobs`).

- **Bulk enrollment** from an uploaded CSV (`patient_id[,appointment_id,starts_at]`). Each
  row goes through the same use case as one enrollment (`DripApplication.enroll`), so a
  row enrolled before is reported `existing`, never enrolled twice. A bad row is refused
  with its line number and reason; the rest go on.
- **Backtest** of campaign definitions over the data set (`DRIP_DATASET_CSV`): `drip
  backtest … --json` in a child process, against a scratch database and scratch topics of
  its own (created, then dropped), so the live state is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse
from uuid import UUID

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from contracts.topics import Topics
from domain.clinic import ClinicSettings
from domain.errors import DomainError
from domain.schedule import APPOINTMENT_STARTS_AT
from projections import jobs
from services.adapters import kafka_admin
from services.adapters.kafka_security import client_options
from services.application.app import Conflict, DripApplication
from services.application.catalog import UnknownCampaign
from services.application.definitions import clinic_document
from services.settings import Settings

log = structlog.get_logger("drip.jobs")
MAX_ROWS = 100_000
BACKTEST_TIMEOUT_SECONDS = 3600.0


class Jobs:
    """Starts jobs in this process (threads) and records their progress in `api_jobs`."""

    def __init__(self, settings: Settings, app: DripApplication, pool: ConnectionPool) -> None:
        self.settings, self.app, self.pool = settings, app, pool
        self._tasks: set[asyncio.Task[None]] = set()

    def _write(self, change: Callable[[Any], None]) -> None:
        with self.pool.connection() as conn, conn.cursor() as cur:
            change(cur)

    def start(self, clinic_id: str, kind: str, total: int | None,
              work: Callable[[UUID], Any]) -> UUID:
        """Record a queued job and run `work(job_id)` in a thread; its return value is the
        job's result, an exception its error."""
        job_id = uuid.uuid4()
        self._write(lambda cur: jobs.create(cur, job_id, clinic_id, kind, total,
                                            datetime.now(UTC)))

        async def run() -> None:
            try:
                result = await asyncio.to_thread(work, job_id)
            except Exception as exc:  # the job failed, not the server: recorded, logged
                error = str(exc)[:2000] or repr(exc)
                log.warning("job failed", job=str(job_id), kind=kind, error=error[:300])
                self._write(lambda cur: jobs.finish(cur, job_id, datetime.now(UTC),
                                                    error=error))
            else:
                self._write(lambda cur: jobs.finish(cur, job_id, datetime.now(UTC), result))
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job_id

    # -- bulk enrollment ---------------------------------------------------------------
    def bulk_enroll(self, clinic_id: str, campaign_id: UUID, raw: bytes) -> UUID:
        """Start enrolling the CSV's patients. Raises `ValueError` for a file that is not a
        CSV with a `patient_id` column (or has more than MAX_ROWS rows)."""
        rows = parse_patients(raw)
        return self.start(clinic_id, "bulk_enroll", len(rows),
                          lambda job: self._enroll_rows(job, clinic_id, campaign_id, rows))

    def _enroll_rows(self, job_id: UUID, clinic_id: str, campaign_id: UUID,
                     rows: list[tuple[int, dict[str, str]]]) -> dict[str, Any]:
        created = existing = 0
        refused: list[dict[str, Any]] = []
        for n, (line, row) in enumerate(rows, 1):
            try:
                if not row.get("patient_id"):
                    raise ValueError("patient_id is empty")
                dates = ({APPOINTMENT_STARTS_AT: _utc(row["starts_at"])}
                         if row.get("starts_at") else {})
                _, new = self.app.enroll(clinic_id, campaign_id, row["patient_id"],
                                         datetime.now(UTC), f"bulk:{job_id}:{line}",
                                         appointment_id=row.get("appointment_id") or None,
                                         dates=dates)
                created, existing = created + new, existing + (not new)
            except (Conflict, DomainError, ValueError, UnknownCampaign) as exc:
                refused.append({"line": line, "reason": str(exc)})
            if n % 100 == 0:
                self._write(lambda cur, n=n: jobs.progress(cur, job_id, n))
        return {"created": created, "existing": existing, "refused": refused}

    # -- backtest ----------------------------------------------------------------------
    def backtest(self, clinic: ClinicSettings, documents: list[dict[str, Any]],
                 limit: int) -> UUID:
        """Start a backtest of these campaign documents for `clinic` over the first `limit`
        rows of the data set. Raises `Conflict` when no data set is configured."""
        if self.settings.dataset_csv is None or not self.settings.dataset_csv.exists():
            raise Conflict("backtests need the data set (DRIP_DATASET_CSV)")
        return self.start(clinic.clinic_id, "backtest", limit,
                          lambda job: self._backtest(job, clinic, documents, limit))

    def _backtest(self, job_id: UUID, clinic: ClinicSettings,
                  documents: list[dict[str, Any]], limit: int) -> Any:
        scratch = f"drip_backtest_{job_id.hex[:12]}"
        prefix = f"backtest-{job_id.hex[:12]}"
        settings = self.settings.model_copy(update={
            "database_url": _with_db(self.settings.database_url, scratch),
            "topic_prefix": prefix, "consumer_prefix": prefix})
        with psycopg.connect(self.settings.database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            with tempfile.TemporaryDirectory(prefix="drip-backtest-") as folder:
                files = []
                for i, doc in enumerate(documents):
                    path = Path(folder) / f"campaign-{i}.json"
                    path.write_text(json.dumps(doc, default=str))
                    files.append(str(path))
                clinic_file = Path(folder) / "clinic.json"
                clinic_file.write_text(json.dumps(clinic_document(clinic)))
                env = {**os.environ, **settings.as_env(), "DRIP_LOG_LEVEL": "warning"}
                self._write(lambda cur: jobs.progress(cur, job_id, 0))
                done = subprocess.run(
                    [sys.executable, "-m", "services.cli", "backtest", *files, "--clinic",
                     str(clinic_file), "--limit", str(limit), "--json"], env=env,
                    capture_output=True, timeout=BACKTEST_TIMEOUT_SECONDS, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"backtest exited with {done.returncode}: "
                                       f"{done.stderr.decode(errors='replace')[-1500:]}")
                self._write(lambda cur: jobs.progress(cur, job_id, limit))
                return json.loads(done.stdout)
        finally:
            with psycopg.connect(self.settings.database_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            with contextlib.suppress(Exception):
                asyncio.run(kafka_admin.delete_topics(
                    settings.kafka_bootstrap, Topics(prefix).all(), client_options(settings)))


def parse_patients(raw: bytes) -> list[tuple[int, dict[str, str]]]:
    """`(line, row)` of a CSV with a `patient_id` column (and optional `appointment_id`,
    `starts_at`). Raises `ValueError` naming what is wrong."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "patient_id" not in reader.fieldnames:
        raise ValueError("the CSV needs a header with a patient_id column")
    rows = [(i + 2, {k: (v or "").strip() for k, v in r.items() if k})
            for i, r in enumerate(reader)]
    if len(rows) > MAX_ROWS:
        raise ValueError(f"more than {MAX_ROWS} rows")
    return [(line, r) for line, r in rows if any(r.values())]


def _utc(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError(f"starts_at {text!r} needs a UTC offset")
    return at.astimezone(UTC)


def _with_db(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))
