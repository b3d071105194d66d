"""`drip projections rebuild` on the real PostgreSQL (§7 "every read model can be dropped
and rebuilt from the event log", §8 replay): the rebuilt tables equal the live ones row for
row, and the rebuild is online — the live tables answer and keep following the log while
it runs, and nothing written meanwhile is lost in the swap."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import Notification
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner

from contracts.topics import UpstreamEvent
from projections import registry
from projections.rebuild import RebuildError, Rebuilt, rebuild, scratch_schema
from projections.registry import LogProjection
from projections.sql import rows
from services.application.app import DripApplication
from services.application.records import ConsumedRecord
from services.bootstrap import build
from services.cli.ops import projections_app
from services.devtools.demo import run_demo
from services.entrypoints.subscribers import parse_upstream
from services.settings import Settings
from tests.gallery import appointment_reminders
from tests.shared_data import CSV

ROWS = 300
START = datetime(2016, 6, 1, tzinfo=UTC)
Snapshot = dict[str, Any]


def no_progress(total: int) -> Callable[[int], None]:
    return lambda n: None


def query(pool: ConnectionPool, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return rows(cur)


def snapshot(pool: ConnectionPool, projection: LogProjection) -> Snapshot:
    """Every row of every table of the projection (in a stable order), and its indexes."""
    out: Snapshot = {t: sorted(query(pool, f"SELECT * FROM public.{t}"), key=repr)
                     for t in projection.tables}
    out["indexes"] = sorted(query(
        pool, "SELECT tablename, indexname, indexdef FROM pg_indexes"
              " WHERE schemaname = 'public' AND tablename = ANY(%s)", (list(projection.tables),)))
    return out


def missed(n: int) -> ConsumedRecord[UpstreamEvent]:
    """The `n`-th record of a writer of upstream events: patient `new-n` missed."""
    patient = f"new-{n}"
    raw = json.dumps({"id": f"new-{n}", "source": "crm", "type": "appointment.missed",
                      "time": (START + timedelta(minutes=n)).isoformat(), "subject": patient,
                      "clinicid": "vitoria",
                      "data": {"patient_id": patient, "appointment_id": f"a-{n}"}}).encode()
    return ConsumedRecord("test.upstream", 0, n, patient.encode(), raw,
                          message=parse_upstream(patient.encode(), raw, ()))


def oids(pool: ConnectionPool, projection: LogProjection) -> list[int]:
    return [query(pool, "SELECT %s::regclass::oid", (f"public.{t}",))[0][0]
            for t in projection.tables]


def rebuilt(app: DripApplication, pool: ConnectionPool, projection: LogProjection,
            read: Callable[[int, int], Sequence[Notification]] | None = None,
            **kwargs: Any) -> Rebuilt:
    with pool.connection() as conn:
        return rebuild(conn, projection, read or app.notifications, app.mapper.to_domain_event,
                       **kwargs)


@pytest.mark.parametrize("name", [p.name for p in registry.PROJECTIONS])
def test_a_damaged_projection_is_rebuilt_row_for_row_from_the_log(settings: Settings,
                                                                  name: str) -> None:  # §7
    run_demo(settings, CSV, ROWS, no_progress)
    services = build(settings)
    pool, projection = services.pool, registry.named(name)
    live, tables = snapshot(pool, projection), oids(pool, projection)
    assert all(live[t] for t in projection.tables), "the demo fills every table"
    views = query(pool, "SELECT count(*) FROM enrollment_events")
    # damage the live tables: a rebuild must not start from what is there
    with pool.connection() as conn:
        for t in projection.tables:
            conn.execute(f"DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} LIMIT 3)")
    assert snapshot(pool, projection) != live
    seen: list[tuple[int, int]] = []
    done = rebuilt(services.app, pool, projection, page=400,
                   progress=lambda d, t: seen.append((d, t)))
    assert snapshot(pool, projection) == live  # rows, index names and definitions
    assert set(oids(pool, projection)).isdisjoint(tables)  # new tables, swapped in
    head = services.app.recorder.max_notification_id()
    assert done.position == head and seen[-1] == (head, head)
    assert len(seen) > 1 and all(d <= t for d, t in seen)  # page by page
    # the views over the tables were recreated; the scratch schema is gone
    assert query(pool, "SELECT count(*) FROM enrollment_events") == views
    assert not query(pool, "SELECT 1 FROM pg_namespace WHERE nspname = %s",
                     (scratch_schema(projection),))
    services.close()


def test_reads_and_the_projector_go_on_during_a_rebuild_and_nothing_is_lost(
        settings: Settings) -> None:  # §7, §8
    run_demo(settings, CSV, ROWS, no_progress)
    services = build(settings)  # its projector follows the log as the live one does
    app, pool, projection = services.app, services.pool, registry.named("campaign_stats")
    written = 0

    def write_and_project() -> None:
        nonlocal written  # a no-show enrolls into the recovery; then the projector's page
        app.handle_upstream("test.writer", [missed(written)])
        written += 1
        services.projector.step()

    def enrolled() -> int:
        return query(pool, "SELECT count(*) FROM enrollments")[0][0]

    # the rebuild pauses on its third page until told to go on (a test double of the log)
    midway, go, reads = threading.Event(), threading.Event(), [0]

    def gated(after: int, limit: int) -> Sequence[Notification]:
        reads[0] += 1
        if reads[0] == 3:
            midway.set()
            assert go.wait(30)
        return app.notifications(after, limit)

    started_at = query(pool, "SELECT position FROM log_positions WHERE name = %s",
                       (registry.POSITION,))[0][0]
    before = enrolled()
    with ThreadPoolExecutor(1) as pool_of_one:
        running = pool_of_one.submit(rebuilt, app, pool, projection, gated, page=100)
        assert midway.wait(30)
        # mid-rebuild: the live tables answer and follow new events at once
        for _ in range(10):
            write_and_project()
            assert enrolled() == before + written
        go.set()
        while not running.done():  # … and through the catch-up and the swap
            write_and_project()
            assert enrolled() >= before + written - 1
        result = running.result()
    assert result.position > started_at  # the swap took in what was written meanwhile
    services.projector.catch_up()
    live = snapshot(pool, projection)
    assert len(live["enrollments"]) == before + written
    # a quiet rebuild from position 0 gives the same rows: the swap lost nothing
    rebuilt(app, pool, projection)
    assert snapshot(pool, projection) == live
    services.close()


def test_a_second_rebuild_of_the_same_projection_is_refused_while_one_runs(
        settings: Settings) -> None:  # §8
    services = build(settings)
    app, pool, projection = services.app, services.pool, registry.named("campaign_stats")
    with pool.connection() as held, held.transaction():
        held.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                     (f"drip:rebuild:{projection.name}",))
        with pytest.raises(RebuildError, match="already running"):
            rebuilt(app, pool, projection)
    services.close()


def test_the_rebuild_command_rebuilds_one_or_every_projection(settings: Settings) -> None:
    services = build(settings)
    services.app.define_campaign(appointment_reminders())
    services.projector.catch_up()
    campaigns = query(services.pool, "SELECT * FROM campaigns")
    runner, env = CliRunner(), settings.as_env()
    for args in (["rebuild", "--all"], ["rebuild", "campaign_stats", "--page", "1"]):
        done = runner.invoke(projections_app, args, env=env)
        assert done.exit_code == 0, done.output
        assert "campaign_stats: swapped in at log position" in done.output
        assert query(services.pool, "SELECT * FROM campaigns") == campaigns
    unknown = runner.invoke(projections_app, ["rebuild", "nope"], env=env)
    assert unknown.exit_code == 3 and "no projection 'nope'" in unknown.output
    assert runner.invoke(projections_app, ["rebuild"], env=env).exit_code == 2
    assert runner.invoke(projections_app, ["rebuild", "campaign_stats", "--all"],
                         env=env).exit_code == 2
    services.close()
