"""`drip demo`: two campaigns over the 110,527 real appointments, on real Kafka and
PostgreSQL, with a simulated clock, from empty state (issue 2 §4)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from contracts.topics import Topics
from domain.templates import appointment_reminders, no_show_recovery
from projections import schema
from services import dataset, kafka_admin
from services.bootstrap import Services, build
from services.clock import SimulatedClock
from services.replay import Replay, ReplayStats
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


@contextlib.asynccontextmanager
async def running(services: Services) -> AsyncIterator[Services]:
    """The broker's subscribers and the timer, dispatcher and projector loops, running."""
    stop = asyncio.Event()
    await services.broker.start()
    loops = [asyncio.create_task(loop(stop)) for loop in
             (services.timer.run, services.dispatcher.run, services.projector.run)]
    try:
        yield services
    finally:
        stop.set()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)
        await services.broker.stop()
        await services.publisher.stop()


async def run_services(services: Services, body: Callable[[], Any]) -> Any:
    """Run `body()` while the services run."""
    async with running(services):
        return await body()


async def drain(services: Services) -> None:
    """Wait until the dispatcher and the projector have followed the whole event log."""
    app = services.app
    while True:
        last = await asyncio.to_thread(app.recorder.max_notification_id) or 0
        await asyncio.to_thread(services.projector.catch_up)
        while await services.dispatcher.relay_once():
            pass
        if (await asyncio.to_thread(app.recorder.max_notification_id) or 0) == last:
            return


def run_demo(settings: Settings, csv: Path, limit: int | None,
             progress: Callable[[int, int], Callable[[int], None]]) -> DemoResult:
    """Reset, define the campaigns, replay the file through the services, drain.

    `progress(total)` returns the callback the replay calls with each chunk's size.
    """
    started = time.monotonic()
    reset(settings, [*_topics(settings)])
    timeline = dataset.timeline(csv, limit)
    clock = SimulatedClock(timeline[0].time if timeline else datetime.now(UTC))
    services = build(settings, clock)
    define_campaigns(services)

    async def body() -> ReplayStats:
        stats = await Replay(services, clock, settings.replay_chunk).run(timeline, progress(len(timeline), 0))
        await drain(services)
        return stats

    stats = asyncio.run(run_services(services, body))
    events = services.app.recorder.max_notification_id() or 0
    return DemoResult(stats, time.monotonic() - started, events, services.dispatcher.relayed)


def _topics(settings: Settings) -> list[str]:
    t = Topics(settings.topic_prefix)
    return [*t.upstream, t.step_due, t.dispatch, t.dead_letters]
