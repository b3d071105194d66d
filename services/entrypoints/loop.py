"""The shape of every long-running loop of drip (timer, relays, projector): do one round,
idle when it found nothing, and ride out the infrastructure's failures.

A transient failure (PostgreSQL restarting, Kafka unreachable) is logged once per
interval and retried with backoff, so the loop resumes by itself when the service is
back. Any other failure is a bug: it propagates, and the supervisor (services/runtime.py)
stops the process loudly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from services.adapters.failures import Failure, classify
from services.adapters.log_throttle import ThrottledLogger

log = ThrottledLogger(structlog.get_logger("drip.loop"), every_seconds=30.0)
BACKOFF_FIRST, BACKOFF_MAX = 0.25, 5.0  # seconds


async def run_loop(name: str, round_: Callable[[], Awaitable[int]],
                   idle: Callable[[], Awaitable[None]]) -> None:
    """`await round_()` until cancelled; `await idle()` after a round that did nothing.
    A transient failure in either (the idle may query: the timer's next due time) is
    ridden out the same way."""
    backoff = BACKOFF_FIRST
    while True:
        try:
            if not await round_():
                await idle()
        except Exception as exc:
            if classify(exc) is not Failure.TRANSIENT:
                raise
            log.warning("transient failure, retrying", loop=name, retry_in=backoff,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        backoff = BACKOFF_FIRST
