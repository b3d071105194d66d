"""Publishing refused records to the dead-letter topic, unchanged, with the reason (§8)."""

from __future__ import annotations

from collections.abc import Iterable

from faststream.kafka import KafkaBroker

from contracts import dead_letters as dlq
from projections.dead_letters import DeadLetter


async def to_dead_letters(broker: KafkaBroker, topic: str, letters: Iterable[DeadLetter]) -> int:
    """Publish each refused record (key and value as received); returns how many."""
    sent = 0
    for d in letters:
        headers = {dlq.REASON: d.reason, dlq.ORIGIN_TOPIC: d.topic,
                   dlq.ORIGIN_PARTITION: str(d.partition), dlq.ORIGIN_OFFSET: str(d.offset),
                   dlq.CONSUMER: d.consumer}
        await broker.publish(d.value or b"", topic=topic, key=d.key, headers=headers)
        sent += 1
    return sent
