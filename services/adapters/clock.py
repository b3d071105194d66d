"""Injectable clocks: the wall clock in production, a simulated clock in replay.

Both give timezone-aware UTC datetimes. `sleep_until(t, timeout)` lets the timer service
sleep until the clock reaches `t` (or, for the simulated clock, moves at all), at most
`timeout` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, t: datetime, timeout: float) -> None: ...


class WallClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, t: datetime, timeout: float) -> None:
        await asyncio.sleep(max(0.0, min(timeout, (t - self.now()).total_seconds())))


class SimulatedClock:
    """Time that moves only when told to (`advance_to`), for replaying history exactly."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def advance_to(self, t: datetime) -> None:
        """Move forward to `t` (never backwards) and wake whoever sleeps."""
        if t > self._now:
            self._now = t
            self._moved.set()

    async def sleep_until(self, t: datetime, timeout: float) -> None:
        """Return at once if the clock reached `t`, else when it next moves (or after
        `timeout` real seconds)."""
        if self._now >= t:
            return
        self._moved.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)
