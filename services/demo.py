"""`drip demo`: two campaigns over the 110,527 real appointments, on real Kafka and
PostgreSQL, with a simulated clock, from empty state (issue 2 §4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from contracts.topics import Topics
from domain.templates import appointment_reminders, no_show_recovery
from projections import schema
from services import dataset, kafka_admin
from services.bootstrap import Services, build
from services.clock import SimulatedClock
from services.replay import Replay, ReplayStats
from services.runtime import drain, run_services
from services.settings import Settings


@dataclass
class DemoResult:
    replay: ReplayStats
    wall_seconds: float
    domain_events: int
    dispatched: int


def reset(settings: Settings, topic_names: list[str]) -> None:
    """Empty state: drop every table, delete and recreate the topics."""
    with psycopg.connect(settings.database_url) as conn:
        schema.reset(conn)
    asyncio.run(kafka_admin.recreate_topics(settings.kafka_bootstrap, topic_names))


def define_campaigns(services: Services) -> None:
    for definition in (appointment_reminders(dataset.CLINIC_ID, dataset.TIME_ZONE),
                       no_show_recovery(dataset.CLINIC_ID, dataset.TIME_ZONE)):
        services.app.define_campaign(definition)


def run_demo(settings: Settings, csv: Path, limit: int | None,
             progress: Callable[[int, int], Callable[[int], None]]) -> DemoResult:
    """Reset, define the campaigns, replay the file through the services, drain.

    `progress(total)` returns the callback the replay calls with each chunk's size.
    """
    started = time.monotonic()
    reset(settings, Topics(settings.topic_prefix).all)
    timeline = dataset.timeline(csv, limit)
    clock = SimulatedClock(timeline[0].time if timeline else datetime.now(UTC))
    services = build(settings, clock)
    define_campaigns(services)

    async def body() -> ReplayStats:
        stats = await Replay(services, clock, settings.replay_chunk).run(timeline, progress(len(timeline), 0))
        await drain(services)
        return stats

    stats = asyncio.run(run_services(services, body, followers="process"))
    events = services.app.recorder.max_notification_id() or 0
    return DemoResult(stats, time.monotonic() - started, events,
                      services.dispatcher.relayed_total())
