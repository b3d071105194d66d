"""Replaying upstream history through the real services on a simulated clock.

The driver publishes upstream events in time order, chunk by chunk. After a chunk
ending at time X has been handled (the upstream consumer's PostgreSQL positions reach
the published offsets), the clock moves to X and the timer service fires every step
due up to X; the next chunk waits until none is left. Upstream events at a moment are
thus handled before steps due at that moment, and within a chunk the aggregates'
event-time catch-up keeps each enrollment in time order, so a replay is deterministic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from projections import consumer_positions, timers
from services.adapters.clock import SimulatedClock
from services.adapters.kafka_security import client_options
from services.adapters.publisher import BulkPublisher
from services.bootstrap import Services
from services.devtools.dataset import UpstreamRecord

END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)
T = TypeVar("T")


class ReplayStalled(RuntimeError):
    """Nothing moved for `stall_seconds` while the replay waited for the services."""


@dataclass
class ReplayStats:
    upstream_events: int = 0
    chunks: int = 0
    seconds: float = 0.0
    fired: int = 0


def chunks(timeline: Sequence[UpstreamRecord], size: int) -> list[Sequence[UpstreamRecord]]:
    """Cut the timeline into pieces of about `size`, never between two equal times."""
    out, start = [], 0
    while start < len(timeline):
        end = min(start + size, len(timeline))
        while end < len(timeline) and timeline[end].time == timeline[end - 1].time:
            end += 1
        out.append(timeline[start:end])
        start = end
    return out


def ends_of(metas: Iterable[Any]) -> dict[tuple[str, int], int]:
    """The last offset per (topic, partition) among produced records' metadata."""
    ends: dict[tuple[str, int], int] = {}
    for m in metas:
        ends[(m.topic, m.partition)] = max(m.offset, ends.get((m.topic, m.partition), -1))
    return ends


class Replay:
    """Drives `services` (built with `clock`) through a timeline of upstream records."""

    def __init__(self, services: Services, clock: SimulatedClock, chunk_size: int = 4000,
                 stall_seconds: float = 120.0) -> None:
        self.s, self.clock = services, clock
        self.chunk_size, self.stall_seconds = chunk_size, stall_seconds
        self.upstream_group = services.settings.upstream_group
        self.producer = BulkPublisher(  # the upstream system
            services.settings.kafka_bootstrap, options=client_options(services.settings))

    def _query(self, fn: Callable[[Any], T]) -> T:
        with self.s.pool.connection() as conn, conn.cursor() as cur:
            return fn(cur)

    async def run(self, timeline: Sequence[UpstreamRecord],
                  progress: Callable[[int], None] = lambda n: None,
                  finish: bool = True) -> ReplayStats:
        """Replay `timeline`; with `finish`, then fire every remaining step."""
        stats, started = ReplayStats(), time.monotonic()
        try:
            for chunk in chunks(timeline, self.chunk_size):
                await self.wait_handled(await self.publish(chunk))
                stats.upstream_events += len(chunk)
                progress(len(chunk))
                await self.fire_until(chunk[-1].time)
                stats.chunks += 1
            if finish:
                await self.fire_until(END_OF_TIME)
        finally:
            await self.producer.stop()
        stats.fired, stats.seconds = self.s.timer.fired, time.monotonic() - started
        return stats

    async def publish(self, chunk: Sequence[UpstreamRecord]) -> dict[tuple[str, int], int]:
        """Publish as the upstream system would; returns the last offset per partition."""
        topics = self.s.topics
        return ends_of(await self.producer.send_many(
            (topics.for_type(r.type), r.key, r.value) for r in chunk))

    async def wait_handled(self, ends: dict[tuple[str, int], int]) -> None:
        """Wait until the upstream consumer's recorded positions reach `ends`."""
        await self._until(lambda: self._handled(ends), "upstream consumer")

    def _handled(self, ends: dict[tuple[str, int], int]) -> bool:
        done = self._query(lambda cur: consumer_positions.all_positions(cur, self.upstream_group))
        return all(done.get(tp, -1) >= offset for tp, offset in ends.items())

    async def fire_until(self, t: datetime) -> None:
        """Move the clock to `t` and wait until no step due at or before `t` is pending."""
        self.clock.advance_to(t)
        await self._until(lambda: self._query(lambda cur: timers.count_due(cur, t)) == 0,
                          "timer service and step-due consumer")

    async def _until(self, condition: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + self.stall_seconds
        while not await asyncio.to_thread(condition):
            if time.monotonic() > deadline:
                raise ReplayStalled(f"waited {self.stall_seconds:.0f} s for the {what}")
            await asyncio.sleep(0.01)
