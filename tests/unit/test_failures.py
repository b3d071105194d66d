"""Which failures are retried and which blame one record (issue 6 §1, STYLE §8), and how
a loop rides out the infrastructure's failures (issue 6 §4)."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import psycopg.errors
import pytest
from aiokafka.errors import KafkaConnectionError
from eventsourcing.persistence import DataError, IntegrityError, OperationalError

from services.adapters.failures import Failure, classify
from services.adapters.log_throttle import RepeatFilter
from services.entrypoints import loop


def wrapped(outer: type[Exception], inner: psycopg.Error) -> Exception:
    """An error as eventsourcing raises it: its own class, psycopg's as the cause."""
    try:
        try:
            raise inner
        except psycopg.Error as exc:
            raise outer(str(exc)) from exc
    except Exception as exc:
        return exc


@pytest.mark.parametrize(("error", "kind"), [
    # psycopg classes an index entry over its size limit as an OperationalError
    (wrapped(OperationalError, psycopg.errors.ProgramLimitExceeded("index row size")),
     Failure.RECORD),
    (wrapped(DataError, psycopg.errors.UntranslatableCharacter("\\u0000")), Failure.RECORD),
    # psycopg's own refusal to send a NUL in text: no SQLSTATE, but the record's fault
    (wrapped(DataError, psycopg.DataError("text fields cannot contain NUL")), Failure.RECORD),
    (wrapped(OperationalError, psycopg.OperationalError("connection refused")),
     Failure.TRANSIENT),
    (wrapped(OperationalError, psycopg.errors.AdminShutdown("terminating")), Failure.TRANSIENT),
    (wrapped(OperationalError, psycopg.errors.SerializationFailure("retry")), Failure.TRANSIENT),
    (wrapped(OperationalError, psycopg.errors.InternalError_("?")), Failure.UNKNOWN),
    (IntegrityError("version conflict"), Failure.CONFLICT),
    (KafkaConnectionError("broker down"), Failure.TRANSIENT),
    (ValueError("a bug this record's content triggers"), Failure.RECORD),
])
def test_a_failure_is_classed_by_its_cause_not_its_class(error: Exception, kind: Failure) -> None:
    assert classify(error) is kind


async def test_a_loop_retries_transient_failures_and_goes_on(monkeypatch) -> None:
    monkeypatch.setattr(loop, "BACKOFF_FIRST", 0.001)
    outcomes: list[int | Exception] = [
        psycopg.OperationalError("server closed the connection"),  # PostgreSQL restarting
        KafkaConnectionError("broker down"), 3, 0]
    rounds, idles = [], []

    async def round_() -> int:
        rounds.append(1)
        outcome = outcomes.pop(0) if outcomes else asyncio.CancelledError()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def idle() -> None:
        idles.append(1)

    with pytest.raises(asyncio.CancelledError):
        await loop.run_loop("test", round_, idle)
    assert len(rounds) == 5 and len(idles) == 1  # idle only after the empty round


async def test_a_bug_in_a_loop_propagates() -> None:
    async def round_() -> int:
        raise KeyError("a bug")

    async def idle() -> None: ...

    with pytest.raises(KeyError):
        await loop.run_loop("test", round_, idle)


def test_a_client_complaint_repeated_during_an_outage_is_logged_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:  # issue 6 §8
    logger = logging.getLogger("aiokafka.test-outage")
    logger.addFilter(RepeatFilter(every_seconds=60))
    with caplog.at_level(logging.ERROR, logger="aiokafka.test-outage"):
        for node in range(1000):
            logger.error("Unable connect to node with id %s", node)
        logger.error("another complaint")
    assert [r.getMessage() for r in caplog.records] == [
        "Unable connect to node with id 0", "another complaint"]


async def test_a_transient_failure_while_idling_is_ridden_out(monkeypatch) -> None:
    """Found by the fault suite: PostgreSQL restarted while the timer read its next due
    time in `idle()`, and the timer loop died."""
    monkeypatch.setattr(loop, "BACKOFF_FIRST", 0.001)
    idles: list[int] = []

    async def round_() -> int:
        if len(idles) == 3:
            raise asyncio.CancelledError
        return 0

    async def idle() -> None:
        idles.append(1)
        if len(idles) == 1:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")

    with pytest.raises(asyncio.CancelledError):
        await loop.run_loop("test", round_, idle)
    assert len(idles) == 3
