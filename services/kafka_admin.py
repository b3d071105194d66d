"""Topic administration: create drip's topics, or delete and recreate them for a fresh run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError


async def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int = 4) -> None:
    """Create the topics that do not exist yet (replication factor 1: a single broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        missing = sorted(set(names) - set(await admin.list_topics()))
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(n, partitions, 1) for n in missing])
    finally:
        await admin.close()


async def recreate_topics(bootstrap: str, names: Iterable[str], partitions: int = 4,
                          timeout: float = 60.0) -> None:
    """Delete the topics (with their data and offsets) and create them empty again.

    Raises `TimeoutError` when the broker has not finished deleting within `timeout` s.
    """
    names = sorted(set(names))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = [n for n in names if n in set(await admin.list_topics())]
        if existing:
            with contextlib.suppress(UnknownTopicOrPartitionError):
                await admin.delete_topics(existing)
        deadline = time.monotonic() + timeout
        while set(existing) & set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {existing} still being deleted")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    while True:
        try:
            await ensure_topics(bootstrap, names, partitions)
            return
        except Exception:  # the broker may still be finishing the deletion
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
