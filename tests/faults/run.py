"""The fault suite's driver (issue 6): a seeded workload published in waves while faults
are injected into `drip serve` processes, then the invariant checker.

    python -m tests.faults.run --rounds 200 --seed 7

prints rounds, faults per kind, events, sends, `lost=0 duplicated=0` and the recovery time
per fault kind, or the first counterexample with its seed. Needs the local stack
(scripts/infra.sh) for the broker and database restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
from aiokafka import AIOKafkaProducer

from contracts.topics import Topics
from domain.campaign import campaign_id
from domain.enrollment import enrollment_id
from services.adapters import kafka_admin
from services.bootstrap import build_application, topic_specs
from services.devtools import infra
from services.settings import Settings
from tests.faults.checker import Findings, check
from tests.faults.cluster import FAULT_KINDS, Cluster
from tests.faults.workload import CLINICS, POISON_KINDS, Record, Workload, campaigns

PROBE_SECONDS = 120.0


@dataclass
class Report:
    seed: int
    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recovery: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    upstream_events: int = 0
    poison: int = 0
    probes: int = 0  # bookings the driver publishes to see drip make progress
    findings: Findings | None = None

    def lines(self) -> list[str]:
        f = self.findings or Findings()
        out = [f"seed={self.seed} rounds={self.rounds} upstream events={self.upstream_events} "
               f"(poison {self.poison}) enrollments={f.enrollments} sends={f.sends} "
               f"skips={f.skips} lost={f.lost} duplicated={f.duplicated} "
               f"(dispatch-topic redeliveries {f.topic_duplicates})",
               "faults: " + ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items()))]
        for kind, times in sorted(self.recovery.items()):
            out.append(f"recovery after {kind}: median {statistics.median(times):.1f} s, "
                       f"max {max(times):.1f} s over {len(times)}")
        out += [f"VIOLATION: {v}" for v in f.violations]
        return out


def fresh_settings(base: Settings, tag: str) -> Settings:
    url = urlparse(base.database_url)
    name = f"drip_faults_{tag}"
    with psycopg.connect(base.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return base.model_copy(update={
        "database_url": urlunparse(url._replace(path=f"/{name}")),
        "topic_prefix": f"faults-{tag}", "consumer_prefix": f"faults-{tag}",
        "idle_seconds": 0.5})


def drop_database(settings: Settings, base: Settings) -> None:
    name = urlparse(settings.database_url).path.lstrip("/")
    with psycopg.connect(base.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def publish(settings: Settings, records: list[Record]) -> None:
    topics = Topics(settings.topic_prefix)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True, max_request_size=4 << 20)
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(topics.for_type(r.event_type), r.value, key=r.key)
    finally:
        await producer.stop()


def query(settings: Settings, sql: str, params: tuple[object, ...] = ()) -> object:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3) as conn:
            row = conn.execute(sql, params or None).fetchone()  # type: ignore[arg-type]
            return row[0] if row else None
    except psycopg.OperationalError:
        return None  # the database is restarting


def wait_until(condition: object, what: str, seconds: float) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"waited {seconds:.0f} s for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def probe(settings: Settings, workload: Workload) -> float:
    """Seconds until a booking published now is enrolled: drip is making progress."""
    now = datetime.now(UTC)
    appointment = f"probe-{uuid.uuid4().hex[:8]}"
    doc = workload.envelope("appointment.booked", CLINICS[0], "probe-patient", now,
                            appointment_id=appointment,
                            starts_at=(now + timedelta(seconds=20)).isoformat())
    eid = enrollment_id(campaign_id(CLINICS[0], "reminders"), appointment)
    started = time.monotonic()
    while True:
        try:
            asyncio.run(publish(settings, [workload.record(doc)]))
            break
        except Exception:  # the broker is restarting: publish as a real upstream would, again
            if time.monotonic() - started > PROBE_SECONDS:
                raise
            time.sleep(0.5)
    wait_until(lambda: query(settings, "SELECT 1 FROM drip_events WHERE originator_id = %s"
                                       " LIMIT 1", (eid,)) == 1,
               "a probe booking to be enrolled", PROBE_SECONDS - (time.monotonic() - started))
    return time.monotonic() - started


def expected_enrollments(waves: list[list[Record]], probes: int) -> dict[str, int]:
    """Per campaign, the distinct (clinic, appointment) triggers the valid records carry
    (and the probes, each a booking of its own)."""
    booked, missed = set(), set()
    for wave in waves:
        for r in wave:
            if r.poison is not None or r.value is None:
                continue
            doc = json.loads(r.value)
            key = (doc["clinicid"], doc["data"].get("appointment_id"))
            if doc["type"] == "appointment.booked":
                booked.add(key)
            elif doc["type"] == "appointment.missed":
                missed.add(key)
    return {"reminders": len(booked) + probes, "recovery": len(missed)}


def drained(settings: Settings) -> bool:
    """No step pending, the dispatcher and the projector at the head of the log."""
    return query(settings, """
        SELECT (SELECT count(*) FROM due_timers) = 0
           AND (SELECT coalesce(max(position), 0) FROM log_positions WHERE name = 'campaign_stats')
               = (SELECT coalesce(max(notification_id), 0) FROM drip_events)
           AND (SELECT coalesce(max(position), 0) FROM log_positions WHERE name = 'dispatcher')
               >= (SELECT coalesce(max(notification_id), 0) FROM drip_events
                   WHERE topic LIKE '%MessageSent')
           AND (SELECT count(*) FROM dead_letters WHERE published_at IS NULL) = 0""") is True


def run(base: Settings, rounds: int, seed: int, faults: tuple[str, ...],
        poison: tuple[str, ...], wave_size: int = 25, processes: int = 1) -> Report:
    rng = random.Random(seed)
    report, workload = Report(seed), Workload(seed)
    tag = f"{seed}_{uuid.uuid4().hex[:6]}"
    settings = fresh_settings(base, tag)
    app = build_application(settings)
    for clinic in CLINICS:
        for definition in campaigns(clinic):
            app.define_campaign(definition)
    app.close()
    asyncio.run(kafka_admin.ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    cluster = Cluster(settings, Path(tempfile.mkdtemp(prefix=f"drip-faults-{tag}-")))
    waves: list[list[Record]] = []
    try:
        for _ in range(processes):
            cluster.start()
        probe(settings, workload)
        report.probes += 1
        order: list[str] = []
        for _ in range(rounds):
            if not order:  # every kind once per cycle, in a seeded random order
                order = rng.sample(faults, len(faults))
            wave = workload.wave(wave_size, tuple(p for p in poison if rng.random() < 0.3))
            asyncio.run(publish(settings, wave))
            waves.append(wave)
            report.upstream_events += len(wave)
            report.poison += sum(r.poison is not None for r in wave)
            kind = order.pop()
            started = time.monotonic()
            cluster.inject(kind, rng.choice)
            probe(settings, workload)
            report.probes += 1
            report.faults[kind] += 1
            report.recovery[kind].append(time.monotonic() - started)
            if dead := cluster.dead():
                raise AssertionError(f"{len(dead)} drip serve process(es) died; logs in "
                                     f"{cluster.log_dir}")
            report.rounds += 1
        wait_until(lambda: drained(settings), "the workload to drain", 180)
        report.findings = check(settings, Topics(settings.topic_prefix).dispatch,
                                expected_enrollments(waves, report.probes))
        letters = query(settings, "SELECT count(*) FROM dead_letters")
        if letters != report.poison:
            report.findings.fail(f"{letters} dead letters for {report.poison} poison records")
        report.findings.lost += max(0, report.poison - int(letters or 0))
        probe(settings, workload)  # every process left running still makes progress
        if dead := cluster.dead():
            report.findings.fail(f"{len(dead)} drip serve process(es) died")
    finally:
        cluster.stop()
        drop_database(settings, base)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--faults", default=",".join(FAULT_KINDS))
    parser.add_argument("--poison", default=",".join(POISON_KINDS))
    args = parser.parse_args()
    endpoints = infra.endpoints_from_env_or_up()
    base = Settings(kafka_bootstrap=endpoints.kafka_bootstrap,
                    database_url=endpoints.database_url)
    report = run(base, args.rounds, args.seed, tuple(args.faults.split(",")),
                 tuple(p for p in args.poison.split(",") if p))
    print("\n".join(report.lines()))
    sys.exit(1 if report.findings and report.findings.violations else 0)


if __name__ == "__main__":
    main()
