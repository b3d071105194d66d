"""Running drip's services in a process, under one supervisor.

Every long-running loop (timer, dispatcher, dead-letter relay, projector, the child
`drip follow` process when the followers run apart, and the subscribers' breaker, which
trips when record after record fails in a handler) is a task of one `asyncio.TaskGroup`:
a loop that dies cancels the others and the body, and the error propagates, so the
process stops loudly instead of living on half-alive. FastStream runs the Kafka consume
loops itself and restarts one that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import structlog

from services.adapters import kafka_admin
from services.adapters.kafka_security import client_options
from services.bootstrap import (
    GatewayProcess,
    Services,
    build_application,
    build_pool,
    topic_specs,
)
from services.entrypoints import metrics
from services.entrypoints.api import create_api, serve_api
from services.entrypoints.gateway import serve_webhooks
from services.settings import Settings

log = structlog.get_logger("drip.runtime")
Followers = Literal["here", "process"]


class LoopDied(RuntimeError):
    """A supervised loop or child process ended although nothing asked it to."""


@contextlib.asynccontextmanager
async def running(services: Services, followers: Followers = "here") -> AsyncIterator[Services]:
    """The broker's subscribers, the timer and the relays, running while the body runs;
    drip's topics are created first if missing (never by the broker's auto-creation).

    `followers="process"` runs the projector and the dispatcher in a `drip follow`
    subprocess (the second core, instead of sharing this process's GIL). Raises an
    `ExceptionGroup` holding the error of a loop that died.
    """
    await kafka_admin.ensure_topics(services.settings.kafka_bootstrap,
                                    topic_specs(services.settings),
                                    client_options(services.settings))
    await services.broker.start()
    try:
        async with asyncio.TaskGroup() as group:
            loops: dict[str, Callable[[], Awaitable[Any]]] = {
                "timer": services.timer.run, "dead-letter-relay": services.dead_letter_relay.run,
                "receipt-relay": services.receipt_relay.run,
                "subscribers": services.breaker.tripped}
            if followers == "here":
                loops |= {"dispatcher": services.dispatcher.run,
                          "projector": services.projector.run}
            elif followers == "process":
                loops["drip follow"] = lambda: child(["follow"], services.settings)
            tasks = [group.create_task(_logged(name, loop), name=name)
                     for name, loop in loops.items()]
            try:
                yield services
            finally:
                await services.broker.stop()  # stop consuming first; in-flight batches commit
                for task in tasks:
                    task.cancel()
    finally:
        await services.broker.stop()
        await services.publisher.stop()


async def _logged(name: str, loop: Callable[[], Awaitable[Any]]) -> None:
    try:
        await loop()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        log.error("loop died, stopping the process", loop=name, error=repr(exc))
        raise
    raise LoopDied(f"{name} returned")


async def child(command: list[str], settings: Settings) -> None:
    """`drip COMMAND…` as a subprocess with these settings; dies with it (cancelling this
    terminates it). Raises `LoopDied` when it exits by itself."""
    env = {**os.environ, **settings.as_env()}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli",
                                                   *command, env=env)
    try:
        code = await process.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()
        raise
    raise LoopDied(f"drip {' '.join(command)} exited with {code}")


def on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (installed at once, before anything starts)."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def serve(services: Services) -> None:
    """Every service until SIGTERM or SIGINT (`drip serve`), then a clean stop: consuming
    stops (in-flight batches finish and commit), the loops end, producers close."""
    stop = on_signals()
    async with running(services):
        api = asyncio.create_task(_logged("api", lambda: serve_api(
            create_api(services.settings, services.app, services.pool,
                       http_extras(services.settings, services.pool)), services.settings)))
        await asyncio.wait([api, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if api.done():
            api.result()  # it died: say why
        api.cancel()
        log.info("stopping on a signal")


async def api_only(settings: Settings) -> None:
    """The HTTP API, dashboard and /metrics alone (`drip api`) until SIGTERM or SIGINT."""
    stop = on_signals()
    app, pool = build_application(settings), build_pool(settings)
    try:
        api = asyncio.create_task(serve_api(create_api(settings, app, pool,
                                                       http_extras(settings, pool)), settings))
        await asyncio.wait([api, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if api.done():
            api.result()
        api.cancel()
    finally:
        pool.close()
        app.close()


def http_extras(settings: Settings, pool: Any) -> list[Any]:
    """Routers served beside the API: /metrics, /health and /ready (§8)."""
    return [metrics.router(settings, pool)]


async def follow(services: Services) -> None:
    """The dispatcher and the projector until SIGTERM or SIGINT (`drip follow`)."""
    stop = on_signals()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_logged(name, loop), name=name)
                     for name, loop in (("dispatcher", services.dispatcher.run),
                                        ("projector", services.projector.run))]
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        await services.publisher.stop()


async def drain(services: Services) -> None:
    """Wait until the relays and the projector have followed everything written so far."""
    app = services.app
    while True:
        last = await asyncio.to_thread(app.recorder.max_notification_id) or 0
        await asyncio.to_thread(services.projector.catch_up)
        await services.dispatcher.drain()
        await services.dead_letter_relay.drain()
        await services.receipt_relay.drain()
        if (await asyncio.to_thread(app.recorder.max_notification_id) or 0) == last:
            return


@contextlib.asynccontextmanager
async def gateway_running(process: GatewayProcess) -> AsyncIterator[GatewayProcess]:
    """The gateway's subscriber and its webhook server, running while the body runs."""
    settings = process.settings
    await kafka_admin.ensure_topics(settings.kafka_bootstrap, topic_specs(settings),
                                    client_options(settings))
    await process.broker.start()
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(_logged("webhooks", lambda: serve_webhooks(
                process.gateway, settings)), name="webhooks")
            try:
                yield process
            finally:
                await process.broker.stop()
                task.cancel()
    finally:
        await process.broker.stop()
        await process.gateway.close()


async def gateway(process: GatewayProcess) -> None:
    """A gateway until SIGTERM or SIGINT (`drip gateway CHANNEL…`)."""
    stop = on_signals()
    async with gateway_running(process):
        await stop.wait()
        log.info("stopping on a signal")
