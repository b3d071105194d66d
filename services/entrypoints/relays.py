"""Relays from PostgreSQL to Kafka: the dispatcher (event log → dispatch requests, §6)
and the dead-letter relay (`dead_letters` table → dead-letter topic, §8).

Both are outboxes: what to publish was committed with the change that caused it. A relay
claims a page in a transaction (locking it), publishes it (acks=all), and only then marks
it done in that same transaction, so a crash in between publishes the page again: at
least once, with keys that let consumers dedupe (the dispatch idempotency key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import psycopg
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic
from psycopg_pool import ConnectionPool

from contracts import dead_letters as dlq
from contracts.messages import DispatchRequestedV1
from domain.enrollment import Enrollment
from projections import dead_letters, gateway_sends, log_positions
from services.adapters.log_listener import LogListener
from services.adapters.publisher import BulkPublisher, Record
from services.application.app import DripApplication
from services.entrypoints.loop import run_loop

JSON = {"content-type": "application/json"}
T = TypeVar("T")


class Relay(Generic[T]):
    """Claim → publish → commit, one page at a time. Subclasses say what a page is."""

    name = "relay"

    def __init__(self, pool: ConnectionPool, publisher: BulkPublisher, topic: str,
                 listener: LogListener | None = None, page: int = 2000,
                 idle_seconds: float = 1.0) -> None:
        self.pool, self.publisher, self.topic = pool, publisher, topic
        self.listener, self.page, self.idle_seconds = listener, page, idle_seconds
        self.relayed = 0
        self._lock = asyncio.Lock()  # the loop and a drain take turns

    def claim(self, cur: psycopg.Cursor[Any]) -> tuple[T, list[Record]]:
        """Lock the next page; return what `done` needs to mark it, and its records."""
        raise NotImplementedError

    def done(self, cur: psycopg.Cursor[Any], claimed: T) -> None:
        raise NotImplementedError

    async def relay_once(self) -> int:
        """Publish the next page; returns how many records it held."""
        async with self._lock:
            conn = await asyncio.to_thread(self.pool.getconn)
            try:
                claimed, records = await asyncio.to_thread(self._claim, conn)
                try:
                    await self.publisher.publish_many(self.topic, records)
                except BaseException:
                    await asyncio.to_thread(conn.rollback)
                    raise
                await asyncio.to_thread(self._done, conn, claimed)
            finally:
                self.pool.putconn(conn)
            self.relayed += len(records)
            return len(records)

    def _claim(self, conn: psycopg.Connection[Any]) -> tuple[T, list[Record]]:
        with conn.cursor() as cur:  # the transaction stays open until _done commits
            return self.claim(cur)

    def _done(self, conn: psycopg.Connection[Any], claimed: T) -> None:
        with conn.cursor() as cur:
            self.done(cur, claimed)
        conn.commit()

    async def drain(self) -> None:
        while await self.relay_once():
            pass

    async def run(self) -> None:
        """Relay until cancelled; between pages wait for a NOTIFY (or `idle_seconds`)."""
        await run_loop(self.name, self.relay_once, self.idle)

    async def idle(self) -> None:
        if self.listener is None:
            await asyncio.sleep(self.idle_seconds)
        else:
            await self.listener.wait(self.idle_seconds)


class Dispatcher(Relay[int]):
    """Relays `Enrollment.MessageSent` events as `message.dispatch_requested` (§6), keyed
    by patient id, with the idempotency key `enrollment:step:attempt`."""

    name = "dispatcher"
    topic_filter = (get_topic(Enrollment.MessageSent),)

    def __init__(self, app: DripApplication, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app

    def claim(self, cur: psycopg.Cursor[Any]) -> tuple[int, list[Record]]:
        after = log_positions.lock_position(cur, self.name)  # held until `done` commits
        head = self.app.recorder.max_notification_id() or 0  # commit order = id order
        page = self.app.notifications(after, self.page, self.topic_filter, stop=head)
        # a short page means everything up to the head was scanned: move there, so the
        # next round does not scan the same events without a send again
        position = page[-1].id if len(page) == self.page else max(after, head)
        return position, [self._record(n) for n in page]

    def done(self, cur: psycopg.Cursor[Any], claimed: int) -> None:
        log_positions.set_position(cur, self.name, claimed)

    def _record(self, n: Notification) -> Record:
        ev: Any = self.app.mapper.to_domain_event(n)
        request = DispatchRequestedV1(
            idempotency_key=ev.idempotency_key, enrollment_id=ev.originator_id,
            clinic_id=ev.clinic_id, patient_id=ev.patient_id, campaign_id=ev.campaign_id,
            step=ev.step, channel=ev.channel, template=ev.template, due_at=ev.at)
        return ev.patient_id.encode(), request.model_dump_json().encode(), JSON

    def relayed_total(self) -> int:
        """Sends relayed so far by any dispatcher process (read from PostgreSQL)."""
        with self.pool.connection() as conn, conn.cursor() as cur:
            return log_positions.followed(cur, self.name, self.app.recorder.events_table_name,
                                          self.topic_filter[0])


class DeadLetterRelay(Relay[list[int]]):
    """Publishes refused records to the dead-letter topic: original key, value (a tombstone
    stays a tombstone) and headers unchanged, plus drip's `drip-dlq-*` headers (§8)."""

    name = "dead-letter-relay"

    def claim(self, cur: psycopg.Cursor[Any]) -> tuple[list[int], list[Record]]:
        claimed = dead_letters.claim_unpublished(cur, self.page)
        return [i for i, _ in claimed], [_dead_letter_record(d) for _, d in claimed]

    def done(self, cur: psycopg.Cursor[Any], claimed: list[int]) -> None:
        dead_letters.mark_published(cur, claimed, datetime.now(UTC))


def _dead_letter_record(d: dead_letters.DeadLetter) -> Record:
    added: Sequence[tuple[str, bytes]] = [
        (dlq.REASON, d.reason.encode()), (dlq.ORIGIN_TOPIC, d.topic.encode()),
        (dlq.ORIGIN_PARTITION, str(d.partition).encode()),
        (dlq.ORIGIN_OFFSET, str(d.offset).encode()), (dlq.CONSUMER, d.consumer.encode())]
    return d.key, d.value, [*d.headers, *added]


class ReceiptRelay(Relay[list[int]]):
    """Publishes the gateways' receipts (`gateway_receipts`, written with the ledger row
    they follow) to the receipts topic, keyed by patient id (§6)."""

    name = "receipt-relay"

    def claim(self, cur: psycopg.Cursor[Any]) -> tuple[list[int], list[Record]]:
        found = gateway_sends.claim_receipts(cur, self.page)
        return [i for i, _, _ in found], [(p.encode(), r.encode(), JSON) for _, p, r in found]

    def done(self, cur: psycopg.Cursor[Any], claimed: list[int]) -> None:
        gateway_sends.mark_published(cur, claimed)
