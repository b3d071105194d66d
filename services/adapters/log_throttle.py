"""Logging the same complaint once per interval: during an outage, a loop that retries
every second must not write thousands of identical lines (issue 6, operations)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class _Gate:
    """Lets a key pass at most once per `every_seconds`; counts what it held back."""

    def __init__(self, every_seconds: float) -> None:
        self.every_seconds = every_seconds
        self._last: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()  # worker threads log too

    def allow(self, key: object) -> int | None:
        """None to suppress, else the number suppressed since the key last passed."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self.every_seconds:
                self._last[key] = (last, suppressed + 1)
                return None
            self._last[key] = (now, 0)
            return suppressed


class ThrottledLogger:
    """Wraps a structlog logger: a given event text is logged at most once per
    `every_seconds`; the next line it lets through says how many were suppressed."""

    def __init__(self, logger: Any, every_seconds: float = 30.0) -> None:
        self._logger, self._gate = logger, _Gate(every_seconds)

    def warning(self, event: str, **fields: Any) -> None:
        if (suppressed := self._gate.allow(event)) is not None:
            self._logger.warning(event, suppressed=suppressed, **fields)

    def error(self, event: str, **fields: Any) -> None:
        if (suppressed := self._gate.allow(event)) is not None:
            self._logger.error(event, suppressed=suppressed, **fields)


class RepeatFilter(logging.Filter):
    """A `logging` filter for the clients' own loggers (aiokafka, FastStream, psycopg's
    pool): the same message template passes at most once per `every_seconds`."""

    def __init__(self, every_seconds: float = 30.0) -> None:
        super().__init__()
        self._gate = _Gate(every_seconds)

    def filter(self, record: logging.LogRecord) -> bool:
        return self._gate.allow((record.name, str(record.msg))) is not None


CLIENT_LOGGERS = ("aiokafka", "faststream", "drip.faststream", "psycopg.pool")


def throttle_client_logs(every_seconds: float = 30.0) -> None:
    """Install one `RepeatFilter` on the Kafka and PostgreSQL clients' loggers (idempotent)."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(every_seconds))
