"""Which failures are the infrastructure's and which are one record's fault (STYLE §8).

A consumer retries the first kind (the batch is not acknowledged and comes again) and
dead-letters the record for the second, so one record never stalls its partition. The
cause is read from the error chain: eventsourcing wraps psycopg's errors, and psycopg
classes some record faults (a btree entry over its size limit) as `OperationalError`, so
the SQLSTATE decides, not the class.
"""

from __future__ import annotations

from enum import StrEnum

import psycopg
import psycopg_pool
from aiokafka.errors import KafkaError
from eventsourcing.persistence import IntegrityError

# SQLSTATE classes: connection exception, transaction rollback (serialization failure,
# deadlock), operator intervention (admin shutdown, cannot connect now), insufficient
# resources
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "57", "53"})
# data exception (NUL in text, value out of range...), program limit exceeded (index row
# size), integrity constraint violation of a read model
RECORD_SQLSTATE_CLASSES = frozenset({"22", "54", "23"})


class Failure(StrEnum):
    CONFLICT = "conflict"  # another writer won the race: retry at once
    TRANSIENT = "transient"  # the infrastructure: retry the batch later, never blame a record
    RECORD = "record"  # this record's content: dead-letter it
    UNKNOWN = "unknown"  # neither: retry a bounded number of times, then dead-letter


def classify(exc: BaseException) -> Failure:
    """The kind of `exc`, looking through its `__cause__` chain."""
    if isinstance(exc, IntegrityError) and _sqlstate(exc) in (None, "23505"):
        return Failure.CONFLICT  # eventsourcing's version conflict or drip's position CAS
    pg = _psycopg_cause(exc)
    if pg is not None:
        state = pg.sqlstate
        if state is None:  # raised by psycopg itself, not by the server
            if isinstance(pg, psycopg.DataError):
                return Failure.RECORD  # a value it cannot send (a NUL in text)
            if isinstance(pg, psycopg.OperationalError | psycopg.InterfaceError):
                return Failure.TRANSIENT  # the connection failed
            return Failure.UNKNOWN
        if state[:2] in TRANSIENT_SQLSTATE_CLASSES:
            return Failure.TRANSIENT
        if state[:2] in RECORD_SQLSTATE_CLASSES:
            return Failure.RECORD
        return Failure.UNKNOWN
    if isinstance(exc, KafkaError | OSError | psycopg_pool.PoolTimeout | TimeoutError):
        return Failure.TRANSIENT
    if isinstance(exc, psycopg.Error):
        return Failure.UNKNOWN
    return Failure.RECORD  # a bug that this record's content triggers


def _psycopg_cause(exc: BaseException) -> psycopg.Error | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.Error):
            return seen
        seen = seen.__cause__
    return None


def _sqlstate(exc: BaseException) -> str | None:
    pg = _psycopg_cause(exc)
    return pg.sqlstate if pg is not None else None
