"""`drip demo`: two campaigns over the 110,527 real appointments, on real Kafka and
PostgreSQL, with a simulated clock, from empty state (issue 2 §4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domain.templates import appointment_reminders, no_show_recovery
from projections import schema
from services.adapters import kafka_admin
from services.adapters.clock import SimulatedClock
from services.adapters.kafka_security import client_options
from services.bootstrap import Services, build, build_pool, topic_specs
from services.devtools import dataset
from services.devtools.replay import Replay, ReplayStats
from services.runtime import drain, running
from services.settings import Settings


@dataclass
class DemoResult:
    replay: ReplayStats
    wall_seconds: float
    domain_events: int
    dispatched: int


def reset(settings: Settings) -> None:
    """Empty state: drop every table, delete and recreate the topics."""
    with build_pool(settings) as pool, pool.connection() as conn:
        schema.reset(conn)
    asyncio.run(kafka_admin.recreate_topics(settings.kafka_bootstrap, topic_specs(settings),
                                            client_options(settings)))


def define_campaigns(services: Services) -> None:
    for definition in (appointment_reminders(dataset.CLINIC_ID, dataset.TIME_ZONE),
                       no_show_recovery(dataset.CLINIC_ID, dataset.TIME_ZONE)):
        services.app.define_campaign(definition)


def run_demo(settings: Settings, csv: Path, limit: int | None,
             progress: Callable[[int], Callable[[int], None]]) -> DemoResult:
    """Reset, define the campaigns, replay the file through the services, drain.

    `progress(total)` returns the callback the replay calls with each chunk's size.
    """
    started = time.monotonic()
    reset(settings)
    timeline = dataset.timeline(csv, limit)
    clock = SimulatedClock(timeline[0].time if timeline else datetime.now(UTC))
    services = build(settings, clock)
    try:
        define_campaigns(services)

        async def body() -> ReplayStats:
            async with running(services, followers="process"):
                replay = Replay(services, clock, settings.replay_chunk)
                stats = await replay.run(timeline, progress(len(timeline)))
                await drain(services)
                return stats

        stats = asyncio.run(body())
        events = services.app.recorder.max_notification_id() or 0
        return DemoResult(stats, time.monotonic() - started, events,
                          services.dispatcher.relayed_total())
    finally:
        services.close()
