"""Waking on new events: PostgreSQL `LISTEN` on the channel eventsourcing `NOTIFY`s on
every insert, so followers of the event log react at once instead of polling."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from psycopg import sql


class LogListener:
    """`await wait(timeout)` returns when an event was inserted, or after `timeout` seconds.

    The listening connection is made on first use and made again after it broke; while
    PostgreSQL is unreachable, `wait` simply times out (the caller's next read reports it).
    """

    def __init__(self, database_url: str, channel: str) -> None:
        self.database_url, self.channel = database_url, channel
        self._conn: psycopg.AsyncConnection | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.database_url,
                                                               autocommit=True)
            await self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return self._conn

    async def wait(self, timeout: float) -> bool:
        """True when woken by a notification, False when the timeout passed first."""
        try:
            conn = await self._connection()
            async for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.OperationalError:
            await self.close()
            await asyncio.sleep(timeout)
            return False

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None
