"""Logging the same complaint once per interval: during an outage, a loop that retries
every second must not write thousands of identical lines (issue 6, operations)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class ThrottledLogger:
    """Wraps a structlog logger: a given event text is logged at most once per
    `every_seconds`; the next line it lets through says how many were suppressed."""

    def __init__(self, logger: Any, every_seconds: float) -> None:
        self._logger, self.every_seconds = logger, every_seconds
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def _allow(self, event: str) -> int | None:
        """None to suppress, else the number suppressed since the last line."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(event, (float("-inf"), 0))
            if now - last < self.every_seconds:
                self._last[event] = (last, suppressed + 1)
                return None
            self._last[event] = (now, 0)
            return suppressed

    def warning(self, event: str, **fields: Any) -> None:
        suppressed = self._allow(event)
        if suppressed is not None:
            self._logger.warning(event, suppressed=suppressed, **fields)

    def error(self, event: str, **fields: Any) -> None:
        suppressed = self._allow(event)
        if suppressed is not None:
            self._logger.error(event, suppressed=suppressed, **fields)


def throttled_logger(logger: Any, every_seconds: float = 30.0) -> ThrottledLogger:
    return ThrottledLogger(logger, every_seconds)


class RepeatFilter(logging.Filter):
    """A `logging` filter for the clients' own loggers (aiokafka, FastStream, psycopg's
    pool): the same message template passes at most once per `every_seconds`."""

    def __init__(self, every_seconds: float = 30.0) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, str(record.msg)), time.monotonic()
        with self._lock:
            if now - self._last.get(key, float("-inf")) < self.every_seconds:
                return False
            self._last[key] = now
            return True


CLIENT_LOGGERS = ("aiokafka", "faststream", "drip.faststream", "psycopg.pool")


def throttle_client_logs(every_seconds: float = 30.0) -> None:
    """Install one `RepeatFilter` on the Kafka and PostgreSQL clients' loggers (idempotent)."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(every_seconds))
