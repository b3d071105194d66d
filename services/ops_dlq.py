"""Redriving dead letters (§8): republish a refused record, unchanged, to the topic it came
from, once the fix that makes it acceptable has shipped (a campaign applied, a clinic
registered, a contract widened).

The record goes back to the partition it came from (whatever partitioner its producer
used, so it stays behind the same patient's earlier records), with its key, value and
headers, plus
a `drip-redrive-of: <dead letter id>` header; the live consumer takes it like any other
record, so it either applies or is dead-lettered again, with a new id and the new reason.
Each redrive is recorded on the dead letter (`redriven_at`, `redriven_to`); a dead letter
already redriven is skipped unless asked again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from psycopg_pool import ConnectionPool

from projections import dead_letters
from projections.dead_letters import Entry
from services.adapters.kafka_security import client_options
from services.adapters.publisher import BulkPublisher
from services.settings import Settings

REDRIVE_HEADER = "drip-redrive-of"
MAX_BYTES = 4 << 20


async def redrive(settings: Settings, pool: ConnectionPool, letters: Sequence[Entry],
                  progress: object | None = None) -> list[tuple[int, str]]:
    """Republish `letters` in id order; returns `(id, "topic[partition]@offset")` of each.
    Raises aiokafka's `KafkaError` when the broker refuses a record (those before it stay
    redriven and recorded)."""
    publisher = BulkPublisher(settings.kafka_bootstrap, max_request_size=MAX_BYTES,
                              options=client_options(settings))
    done: list[tuple[int, str]] = []
    try:
        for entry in letters:
            d = entry.letter
            headers = [*[(k, v) for k, v in d.headers if k != REDRIVE_HEADER],
                       (REDRIVE_HEADER, str(entry.id).encode())]
            [(partition, offset)] = await publisher.publish_many(
                d.topic, [(d.key, d.value, headers)], partition=d.partition)
            to = f"{d.topic}[{partition}]@{offset}"
            with pool.connection() as conn, conn.cursor() as cur:
                dead_letters.mark_redriven(cur, [(entry.id, to)], datetime.now(UTC))
            done.append((entry.id, to))
            if callable(progress):
                progress(1)
    finally:
        await publisher.stop()
    return done
