"""The projector: keeps the campaign statistics read model (§7) caught up with the event
log, one page per transaction together with its log position (exactly once)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import Notification
from psycopg_pool import ConnectionPool

from projections import log_positions, registry
from services.adapters.log_listener import LogListener
from services.application.app import DripApplication
from services.entrypoints.loop import run_loop


class Projector:
    """`step()` applies one page; `catch_up()` until none is left; `run()` until cancelled."""

    name = registry.POSITION

    def __init__(self, app: DripApplication, pool: ConnectionPool, listener: LogListener,
                 page: int = 5000, idle_seconds: float = 1.0) -> None:
        self.app, self.pool, self.listener = app, pool, listener
        self.page, self.idle_seconds = page, idle_seconds

    def _read(self, after: int, limit: int) -> Sequence[Notification]:
        return self.app.notifications(after, limit)

    def _apply(self, cur: psycopg.Cursor[Any], page: Sequence[Notification]) -> None:
        events = [self.app.mapper.to_domain_event(n) for n in page]
        for projection in registry.PROJECTIONS:
            projection.apply(cur, events)

    def step(self) -> int:
        """Apply one page; returns how many notifications it held (0 = caught up)."""
        with self.pool.connection() as conn:
            return log_positions.follow_once(conn, self.name, self._read, self._apply,
                                             self.page)

    def catch_up(self) -> int:
        total = 0
        while n := self.step():
            total += n
        return total

    async def run(self) -> None:
        async def round_() -> int:
            return await asyncio.to_thread(self.step)

        async def idle() -> None:
            await self.listener.wait(self.idle_seconds)

        await run_loop(self.name, round_, idle)
