"""Process-wide logging: structlog, as JSON lines or for a console, at `DRIP_LOG_LEVEL`.

Logs carry ids, keys, counts and reasons only, never message bodies, phone numbers or
e-mail addresses (§6). Retries scheduled by stamina are logged at `info` with the cause.
"""

from __future__ import annotations

import logging
import sys

import stamina.instrumentation
import structlog

from services.settings import Settings

log = structlog.get_logger("drip.retry")


def configure(settings: Settings) -> None:
    """Configure structlog (and the standard library's root logger) for this process:
    `json` renders one JSON object per line with an ISO-8601 UTC timestamp, `console` a
    readable line, `auto` JSON unless stderr is a terminal; records below
    `settings.log_level` are dropped."""
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    json_lines = settings.log_format == "json" or (settings.log_format == "auto"
                                                   and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines
        else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),  # stderr as it is now
        cache_logger_on_first_use=False)
    handler = logging.StreamHandler(sys.stderr)  # the libraries' own logs, rendered alike
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.processors.format_exc_info]))
    logging.basicConfig(level=max(level, logging.WARNING), handlers=[handler], force=True)
    stamina.instrumentation.set_on_retry_hooks([_on_retry])


def _on_retry(details: stamina.instrumentation.RetryDetails) -> None:
    log.info("retry scheduled", retry=details.retry_num,
             wait_seconds=round(details.wait_for, 3), cause=repr(details.caused_by)[:200])
