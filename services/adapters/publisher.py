"""Bulk publishing to Kafka: enqueue many records, then wait for all their acks.

FastStream's `broker.publish` awaits each record's delivery; for thousands of timers
or sends per round that serialises on the event loop. aiokafka's `send` only enqueues
(records keep their order per partition) and returns a future per record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

Record = tuple[bytes | None, bytes | None, Mapping[str, str] | Sequence[tuple[str, bytes]]]
"""`(key, value, headers)`; a `None` value is a tombstone, headers a dict or raw pairs."""


class BulkPublisher:
    """An idempotent producer with `acks=all` (NOTES: the defaults are acks=1, no idempotence)."""

    def __init__(self, bootstrap: str, max_request_size: int = 1 << 20,
                 options: Mapping[str, Any] | None = None) -> None:
        """`options`: the clients' security options (services/adapters/kafka_security.py)."""
        self.bootstrap, self.max_request_size = bootstrap, max_request_size
        self.options = dict(options or {})
        self._producer: AIOKafkaProducer | None = None  # made on start: it binds the loop
        self._starting: asyncio.Lock | None = None

    async def start(self) -> AIOKafkaProducer:
        """Start the producer once, however many tasks share this publisher."""
        if self._producer is None:
            self._starting = self._starting or asyncio.Lock()
            async with self._starting:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                        linger_ms=5, max_request_size=self.max_request_size, **self.options)
                    await producer.start()
                    self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish_many(self, topic: str, records: Iterable[Record],
                           partition: int | None = None) -> list[tuple[int, int]]:
        """Publish `(key, value, headers)` records (to `partition`, else by key); returns
        (partition, offset) of each.

        Raises aiokafka's `KafkaError` when a record cannot be delivered.
        """
        producer = await self.start()
        futures = [await producer.send(topic, value, key=key, headers=_headers(headers),
                                       partition=partition)
                   for key, value, headers in records]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]

    async def send_many(self, records: Iterable[tuple[str, bytes | None, bytes]]) -> list:
        """Publish `(topic, key, value)` records across topics; returns their metadata."""
        producer = await self.start()
        futures = [await producer.send(topic, value, key=key)
                   for topic, key, value in records]
        return list(await asyncio.gather(*futures))


def _headers(headers: Mapping[str, str] | Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    if isinstance(headers, Mapping):
        return [(k, v.encode()) for k, v in headers.items()]
    return list(headers)
