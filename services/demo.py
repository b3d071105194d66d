"""`drip demo`: two campaigns over the 110,527 real appointments, on real Kafka and
PostgreSQL, with a simulated clock, from empty state (issue 2 §4)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
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
async def running(services: Services, followers: str = "here") -> AsyncIterator[Services]:
    """The broker's subscribers, the timer, and the log followers (dispatcher, projector),
    running. `followers="process"` runs the followers in a `drip follow` subprocess, so
    they use the second core instead of sharing this process's GIL.
    """
    stop = asyncio.Event()
    await services.broker.start()
    loops = [services.timer.run]
    child = None
    if followers == "process":
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "follow", env=_child_env(services.settings))
    else:
        loops += [services.dispatcher.run, services.projector.run]
    tasks = [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        yield services
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 10)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            await child.wait()
        await services.broker.stop()
        await services.publisher.stop()


async def follow(services: Services) -> None:
    """Run the dispatcher and the projector until SIGTERM or SIGINT (`drip follow`)."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await asyncio.gather(services.dispatcher.run(stop), services.projector.run(stop))
    finally:
        await services.publisher.stop()


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        env[f"DRIP_{name.upper()}"] = str(value)
    return env


async def run_services(services: Services, body: Callable[[], Any],
                       followers: str = "here") -> Any:
    """Run `body()` while the services run."""
    async with running(services, followers):
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

    stats = asyncio.run(run_services(services, body, followers="process"))
    events = services.app.recorder.max_notification_id() or 0
    return DemoResult(stats, time.monotonic() - started, events,
                      services.dispatcher.relayed_total())


def _topics(settings: Settings) -> list[str]:
    t = Topics(settings.topic_prefix)
    return [*t.upstream, t.step_due, t.dispatch, t.dead_letters]
