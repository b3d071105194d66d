"""Topic administration: create drip's topics, or delete and recreate them for a fresh run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import stamina
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError


class TopicsStillExist(RuntimeError):
    """The broker has not finished deleting topics (KRaft deletes asynchronously)."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic as drip creates it: never left to the broker's auto-creation."""

    name: str
    partitions: int = 4
    replication_factor: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec],
                        options: Mapping[str, Any] | None = None) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.
    `options`: the clients' security options (services/adapters/kafka_security.py)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([
                    NewTopic(s.name, s.partitions, s.replication_factor,
                             topic_configs=dict(s.configs)) for s in missing])
    finally:
        await admin.close()


async def recreate_topics(bootstrap: str, specs: Iterable[TopicSpec],
                          options: Mapping[str, Any] | None = None,
                          timeout: float = 60.0) -> None:
    """Delete the topics (with their data and offsets) and create them empty again.

    Raises `TopicsStillExist` (or the broker's `KafkaError`) when the broker has not
    finished within `timeout` seconds.
    """
    specs = list(specs)
    names = sorted({s.name for s in specs})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        existing = [n for n in names if n in set(await admin.list_topics())]
        if existing:
            with contextlib.suppress(UnknownTopicOrPartitionError):
                await admin.delete_topics(existing)
        async for attempt in stamina.retry_context(on=TopicsStillExist, attempts=None,
                                                   timeout=timeout, wait_max=0.5):
            with attempt:
                if still := set(existing) & set(await admin.list_topics()):
                    raise TopicsStillExist(f"topics {sorted(still)} still being deleted")
    finally:
        await admin.close()
    # creating a topic whose deletion the controller is still finishing can fail for a while
    async for attempt in stamina.retry_context(on=KafkaError, attempts=None, timeout=timeout,
                                               wait_max=0.5):
        with attempt:
            await ensure_topics(bootstrap, specs, options)


async def delete_topics(bootstrap: str, names: Iterable[str],
                        options: Mapping[str, Any] | None = None) -> None:
    """Delete these topics if they exist (with their data); the broker finishes on its own."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(options or {}))
    await admin.start()
    try:
        existing = sorted(set(names) & set(await admin.list_topics()))
        if existing:
            with contextlib.suppress(UnknownTopicOrPartitionError):
                await admin.delete_topics(existing)
    finally:
        await admin.close()
