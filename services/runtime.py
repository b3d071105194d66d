"""Running drip's services in a process: the broker's subscribers, the timer service and
the event-log followers (dispatcher, projector), and waiting for the followers to catch up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.bootstrap import Services
from services.settings import Settings


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
