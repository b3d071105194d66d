"""The invariants the fault suite checks after a run has drained (issue 6):
every upstream record accounted for once, every step sent or skipped exactly once and
never twice, no send after a stop, every send on the dispatch topic, every read model
equal to its rebuild from the event log."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse, urlunparse
from uuid import UUID

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.messages import DispatchRequestedV1
from domain.enrollment import Enrollment
from projections import campaign_stats
from services.application.app import DripApplication
from services.bootstrap import eventsourcing_env
from services.settings import Settings

READ_MODEL_TABLES = {"campaigns": "campaign_id", "enrollments": "enrollment_id",
                     "campaign_counts": "campaign_id, metric, key",
                     "step_skips": "campaign_id, step, reason"}


@dataclass
class Findings:
    """What the checker counted; `violations` empty means every invariant held."""

    sends: int = 0
    skips: int = 0
    enrollments: int = 0
    lost: int = 0
    duplicated: int = 0
    topic_duplicates: int = 0
    violations: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(message)


def domain_events(settings: Settings) -> list[Any]:
    app = DripApplication(env={**eventsourcing_env(settings), "CREATE_TABLE": "false"})
    try:
        out: list[Any] = []
        after = 0
        while page := app.notifications(after, 5000):
            out += [app.mapper.to_domain_event(n) for n in page]
            after = page[-1].id
        return out
    finally:
        app.close()


def check_enrollments(events: list[Any], expected: dict[str, int], found: Findings) -> None:
    """Started once per trigger; each step one outcome; no send after a stop."""
    by_enrollment: dict[UUID, list[Any]] = defaultdict(list)
    for ev in events:
        if isinstance(ev, Enrollment.Event):
            by_enrollment[ev.originator_id].append(ev)
    started: Counter[str] = Counter()
    for eid, evs in by_enrollment.items():
        first = evs[0]
        started[f"{first.clinic_id}/{first.campaign_id}"] += 1
        outcomes: Counter[int] = Counter()
        stopped_at = None
        for ev in evs:
            if isinstance(ev, Enrollment.MessageSent | Enrollment.StepSkipped):
                outcomes[ev.index] += 1
            if isinstance(ev, Enrollment.MessageSent):
                found.sends += 1
                if stopped_at is not None and ev.at > stopped_at:
                    found.fail(f"send after stop: {eid} step {ev.step}")
            if isinstance(ev, Enrollment.StepSkipped):
                found.skips += 1
            if isinstance(ev, Enrollment.Stopped):
                stopped_at = ev.at
        twice = [i for i, n in outcomes.items() if n > 1]
        if twice:
            found.duplicated += len(twice)
            found.fail(f"enrollment {eid}: steps {twice} have more than one outcome")
        ended = isinstance(evs[-1], Enrollment.Completed | Enrollment.Stopped)
        if isinstance(first, Enrollment.Enrolled) and not ended:
            found.fail(f"enrollment {eid} never ended")
        if ended and sorted(outcomes) != list(range(len(outcomes))):
            found.fail(f"enrollment {eid}: a step has no outcome ({sorted(outcomes)})")
    found.enrollments = sum(started.values())
    if sum(started.values()) != sum(expected.values()):
        found.lost += abs(sum(expected.values()) - sum(started.values()))
        found.fail(f"{sum(started.values())} enrollments started, the workload triggers "
                   f"{sum(expected.values())}")


async def dispatch_keys(settings: Settings, topic: str) -> Counter[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        keys: Counter[str] = Counter()
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    keys[DispatchRequestedV1.model_validate_json(r.value).idempotency_key] += 1
        return keys
    finally:
        await consumer.stop()


def check_dispatches(events: list[Any], keys: Counter[str], found: Findings) -> None:
    sent = [ev.idempotency_key for ev in events if isinstance(ev, Enrollment.MessageSent)]
    missing = [k for k in sent if k not in keys]
    found.lost += len(missing)
    if missing:
        found.fail(f"{len(missing)} sends never reached the dispatch topic, e.g. {missing[0]}")
    found.topic_duplicates = sum(n - 1 for n in keys.values() if n > 1)


def check_read_models(settings: Settings, events: list[Any], found: Findings) -> None:
    """The live read model equals a rebuild from the whole event log, row for row."""
    url = urlparse(settings.database_url)
    name = f"{url.path.lstrip('/')}_rebuild"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    rebuilt_url = urlunparse(url._replace(path=f"/{name}"))
    try:
        with psycopg.connect(rebuilt_url) as conn, conn.cursor() as cur:
            cur.execute(campaign_stats.DDL)
            for start in range(0, len(events), 5000):
                campaign_stats.apply(cur, events[start:start + 5000])
            conn.commit()
            rebuilt = {t: _rows(cur, t, k) for t, k in READ_MODEL_TABLES.items()}
        with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
            live = {t: _rows(cur, t, k) for t, k in READ_MODEL_TABLES.items()}
        for table in READ_MODEL_TABLES:
            if live[table] != rebuilt[table]:
                found.fail(f"read model {table} differs from its rebuild "
                           f"({len(live[table])} live rows, {len(rebuilt[table])} rebuilt)")
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rows(cur: psycopg.Cursor[Any], table: str, key: str) -> list[tuple[Any, ...]]:
    cur.execute(f"SELECT * FROM {table} ORDER BY {key}")
    return cur.fetchall()


def check(settings: Settings, dispatch_topic: str, expected: dict[str, int]) -> Findings:
    found = Findings()
    events = domain_events(settings)
    check_enrollments(events, expected, found)
    check_dispatches(events, asyncio.run(dispatch_keys(settings, dispatch_topic)), found)
    check_read_models(settings, events, found)
    return found
