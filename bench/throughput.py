"""Throughput of drip against raw Kafka and raw PostgreSQL baselines, measured in one run.

Measures, on the first N rows of the no-show data set (2 upstream events per row):

1. drip: `services.devtools.demo.run_demo` (reset, two campaigns, replay, drain) - upstream events/s,
   domain events/s and timers fired/s over the replay, plus the process's peak RSS;
2. raw Kafka: the same upstream records produced with a plain idempotent `acks="all"`
   producer to a fresh 4-partition topic, then consumed back with a plain consumer -
   records/s for produce + consume, no processing;
3. raw PostgreSQL: as many rows as drip's domain events, inserted with psycopg
   `executemany` in transactions of 2,000 rows into a table shaped like eventsourcing's
   stored events - rows/s.

It prints the figures and the ratios drip ÷ raw. Everything runs in a private database
(`drip_bench_<random>`, dropped at the end) and topic/consumer prefix (`bench-<random>`,
topics and consumer groups deleted at the end), so it never touches a running `drip demo`.

Run (Kafka and PostgreSQL up: `bash scripts/infra.sh up`):

    .venv/bin/python -m bench.throughput [--rows N]      # default N = 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import time
import uuid
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest

from services.adapters import kafka_admin
from services.devtools import dataset
from services.devtools.demo import run_demo
from services.settings import Settings

KAFKA = "127.0.0.1:19092"
SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "medical-appointments-no-show.csv"
ADMIN_URL = "postgresql://drip:drip@127.0.0.1:54329/drip"
PG_BATCH = 2000


async def raw_kafka(topic: str, records: list[dataset.UpstreamRecord]) -> tuple[float, float]:
    """Seconds to produce all `records`, then seconds to consume them all back."""
    await kafka_admin.ensure_topics(KAFKA, [kafka_admin.TopicSpec(topic)])  # 4 partitions, like drip's
    # Same producer knobs as services/adapters/publisher.py.
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:  # untimed warm-up: one record per partition, so every leader is elected and known
        partitions = sorted(await producer.partitions_for(topic))
        for p in partitions:
            await producer.send_and_wait(topic, b"warm-up", partition=p)
        started = time.perf_counter()
        futures = [await producer.send(topic, r.value, key=r.key) for r in records]
        await asyncio.gather(*futures)
        produced = time.perf_counter() - started
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=None,
                                auto_offset_reset="earliest")
    started = time.perf_counter()
    await consumer.start()
    try:
        read = 0  # the records plus the warm-up ones
        while read < len(records) + len(partitions):
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            read += sum(len(b) for b in batches.values())
        consumed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return produced, consumed


def raw_pg(url: str, rows: int) -> float:
    """Seconds to insert `rows` eventsourcing-shaped rows, 2,000 per transaction."""
    state = json.dumps({"timestamp": "2016-04-29T18:38:08Z", "campaign_id": str(uuid.uuid4()),
                        "step": "reminder-1", "pad": "x" * 125}).encode()  # 250 bytes
    ids = [uuid.uuid4() for _ in range(rows // 4 + 1)]  # ~4 versions per aggregate
    data = [(ids[i // 4], i % 4 + 1, "domain.enrolment:Enrolment.StepDue", state)
            for i in range(rows)]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE raw_events (originator_id uuid NOT NULL, originator_version"
                     " bigint NOT NULL, topic text, state bytea, notification_id bigserial,"
                     " PRIMARY KEY (originator_id, originator_version))")
        conn.execute("CREATE UNIQUE INDEX ON raw_events (notification_id)")
        conn.commit()
        started = time.perf_counter()
        for at in range(0, rows, PG_BATCH):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO raw_events (originator_id, originator_version,"
                                " topic, state) VALUES (%s, %s, %s, %s)",
                                data[at:at + PG_BATCH])
        return time.perf_counter() - started


async def delete_kafka_state(prefix: str) -> None:
    """Delete the run's topics and consumer groups (aiokafka has no public delete-groups)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        if topics := [t for t in await admin.list_topics() if t.startswith(prefix + ".")]:
            await admin.delete_topics(topics)
        for group, _ in await admin.list_consumer_groups():
            if group.startswith(prefix + "."):
                node = await admin.find_coordinator(group)
                await admin._send_request(DeleteGroupsRequest([group]), node)
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="CSV rows (default 20000)")
    parser.add_argument("--csv", type=Path, default=Path(os.environ.get("DRIP_DATASET_CSV", SHARED_CSV)),
                        help="appointments CSV (default: DRIP_DATASET_CSV or ../shared/data)")
    args = parser.parse_args()
    rows, csv = args.rows, args.csv
    tag = secrets.token_hex(4)
    db, prefix = f"drip_bench_{tag}", f"bench-{tag}"
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + db
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        settings = Settings(kafka_bootstrap=KAFKA, database_url=url,
                            topic_prefix=prefix, consumer_prefix=prefix)
        result = run_demo(settings, csv, rows, lambda total: (lambda n: None))
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        records = dataset.timeline(csv, rows)
        produced, consumed = asyncio.run(raw_kafka(f"{prefix}.raw-baseline", records))
        pg_seconds = raw_pg(url, result.domain_events)
    finally:
        asyncio.run(delete_kafka_state(prefix))
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    replay = result.replay
    drip_up = replay.upstream_events / replay.seconds
    drip_domain = result.domain_events / replay.seconds
    kafka_rate = len(records) / (produced + consumed)
    pg_rate = result.domain_events / pg_seconds
    print(f"machine: nproc={os.cpu_count()}  python={platform.python_version()}  "
          f"rows={rows}  upstream events={replay.upstream_events}")
    table = [
        ("drip replay seconds", f"{replay.seconds:.2f}"),
        ("drip wall seconds (reset+replay+drain)", f"{result.wall_seconds:.2f}"),
        ("drip upstream events/s", f"{drip_up:,.0f}"),
        (f"drip domain events/s ({result.domain_events:,} events)", f"{drip_domain:,.0f}"),
        (f"drip timers fired/s ({replay.fired:,} fired)", f"{replay.fired / replay.seconds:,.0f}"),
        ("drip dispatch requests relayed", f"{result.dispatched:,}"),
        ("drip peak RSS (MiB)", f"{peak_rss_mib:,.0f}"),
        ("raw kafka produce records/s", f"{len(records) / produced:,.0f}"),
        ("raw kafka consume records/s", f"{len(records) / consumed:,.0f}"),
        ("raw kafka produce+consume records/s", f"{kafka_rate:,.0f}"),
        (f"raw pg rows/s ({result.domain_events:,} rows)", f"{pg_rate:,.0f}"),
        ("ratio drip upstream/s ÷ raw kafka/s", f"{drip_up / kafka_rate:.3f}"),
        ("ratio drip domain events/s ÷ raw pg rows/s", f"{drip_domain / pg_rate:.3f}"),
    ]
    width = max(len(name) for name, _ in table)
    print("\n".join(f"{name:<{width}}  {value:>12}" for name, value in [("figure", "value"), *table]))


if __name__ == "__main__":
    main()
