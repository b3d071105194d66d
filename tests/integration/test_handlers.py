"""Handlers on FastStream's in-memory TestKafkaBroker, with the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import uuid4

import psycopg
import psycopg.errors
import pytest
from eventsourcing.persistence import OperationalError
from faststream.kafka import TestKafkaBroker

from contracts.timers import StepDueV1
from contracts.topics import UpstreamEvent
from projections import consumer_positions, dead_letters, timers
from services.application.records import ConsumedRecord
from services.application.unit_of_work import UnitOfWork
from services.bootstrap import Services, build
from services.entrypoints.subscribers import (
    Breaker,
    SystemicFailure,
    handle_batch,
    parse_upstream,
)
from services.settings import Settings
from tests.gallery import appointment_reminders

BOOKED = {"id": "e1", "source": "crm", "type": "appointment.booked",
          "time": "2016-04-29T10:00:00Z", "subject": "p1", "clinic_id": "vitoria",
          "data": {"appointment_id": "a1", "patient_id": "p1",
                   "starts_at": "2016-05-04T13:00:00Z"}}


def dump(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def booking(offset: int, appointment: str) -> ConsumedRecord[UpstreamEvent]:
    raw = dump({**BOOKED, "data": {**BOOKED["data"], "appointment_id": appointment}})
    return ConsumedRecord("t", 0, offset, b"p1", raw, message=parse_upstream(b"p1", raw, ()))


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings)
    built.app.define_campaign(appointment_reminders())
    yield built
    built.close()


def query(services: Services, read: Any) -> Any:
    with services.pool.connection() as conn, conn.cursor() as cur:
        return read(cur)


async def test_bad_records_are_dead_lettered_and_the_good_one_enrolls(services: Services) -> None:
    records = [b"{not json", dump({**BOOKED, "type": "appointment.teleported"}),
               dump({**BOOKED, "clinic_id": "atlantis"}), dump(BOOKED)]
    async with TestKafkaBroker(services.broker) as broker:
        # one partition each: the in-memory broker numbers every record offset 0
        for partition, value in enumerate(records):
            await broker.publish(value, topic=services.topics.appointments,
                                 partition=partition, key=b"p1")
    letters = query(services, dead_letters.listing)
    assert sorted(d.reason for d in letters) == [
        "malformed message: invalid JSON: Expecting property name enclosed in double quotes:"
        " line 1 column 2 (char 1)",
        "unknown clinic 'atlantis'", "unknown event type 'appointment.teleported'"]
    assert query(services, timers.count_due) == 1  # the confirmation step of the one enrollment


async def test_a_redelivered_batch_changes_nothing(services: Services) -> None:
    async with TestKafkaBroker(services.broker) as broker:
        await broker.publish(dump(BOOKED), topic=services.topics.appointments, key=b"p1")
        events = services.app.recorder.max_notification_id()
        positions = query(services, lambda cur: consumer_positions.all_positions(
            cur, services.settings.upstream_group))
        # the same record again, at the same offset (the in-memory broker numbers every
        # record 0), as Kafka redelivers it after a crash before the commit
        await broker.publish(dump(BOOKED), topic=services.topics.appointments, key=b"p1")
    assert services.app.recorder.max_notification_id() == events
    assert query(services, lambda cur: consumer_positions.all_positions(
        cur, services.settings.upstream_group)) == positions
    assert query(services, dead_letters.count) == 0


def test_records_at_or_below_the_recorded_position_are_skipped(services: Services) -> None:
    batch = [booking(5, "a5"), booking(6, "a6")]
    assert services.app.handle_upstream("group", batch).recorded > 0
    uow = services.app.unit_of_work()
    later = booking(7, "a7")
    assert uow.fresh("group", [*batch, later]) == [later]
    assert [(a.expected, a.position) for a in uow.effects.advances] == [(6, 7)]


async def test_a_record_that_breaks_the_handler_is_dead_lettered_and_the_rest_go_on(
        services: Services) -> None:
    good, poison = [booking(1, "a1"), booking(3, "a3")], booking(2, "boom")

    def flaky_use_case(consumer: str,
                       batch: Sequence[ConsumedRecord[UpstreamEvent]]) -> UnitOfWork:
        if any(r.message is not None and r.message.data.appointment_id == "boom"  # type: ignore[union-attr]
               for r in batch):
            raise ValueError("a bug that only this record triggers")
        return services.app.handle_upstream(consumer, batch)

    await handle_batch("group", flaky_use_case, [good[0], poison, good[1]])
    assert [d.reason for d in query(services, dead_letters.listing)] == [
        "unprocessable: ValueError: a bug that only this record triggers"]
    assert query(services, timers.count_due) == 2  # both good bookings enrolled


def test_a_step_due_of_another_clinic_or_of_no_enrollment_is_dead_lettered(
        services: Services) -> None:  # §1: nothing crosses clinics
    booked = services.app.handle_upstream("up", [booking(0, "a1")])
    timer = booked.effects.timers[0]
    due = StepDueV1(enrollment_id=timer.enrollment_id, clinic_id="elsewhere", patient_id="p1",
                    step_index=0, due_at=timer.due_at)
    stray = due.model_copy(update={"enrollment_id": uuid4(), "clinic_id": "vitoria"})
    uow = services.app.handle_step_due("steps", [ConsumedRecord("s", 0, 0, None, None, message=due),
                                                 ConsumedRecord("s", 0, 1, None, None, message=stray)])
    assert [d.reason for d in uow.effects.dead_letters] == [
        f"enrollment {timer.enrollment_id} is not of clinic 'elsewhere'",
        f"unknown enrollment {stray.enrollment_id}"]
    assert uow.recorded == 0


def letters_of(uow: UnitOfWork) -> list[str]:
    return [d.reason for d in uow.effects.dead_letters]


def test_one_appointment_booked_again_for_another_patient_is_dead_lettered(
        services: Services) -> None:  # issue 6 §3: never dropped without a trace
    services.app.handle_upstream("up", [booking(0, "a1")])
    raw = dump({**BOOKED, "id": "e2", "subject": "p2",
                "data": {**BOOKED["data"], "patient_id": "p2"}})
    uow = services.app.handle_upstream("up", [ConsumedRecord(
        "t", 0, 1, b"p2", raw, message=parse_upstream(b"p2", raw, ()))])
    assert letters_of(uow) == [
        "appointment 'a1' belongs to another patient (campaign 'appointment-reminders')"]
    assert uow.recorded == 0


def test_the_same_appointment_booked_with_a_new_start_re_times_its_reminders(
        services: Services) -> None:  # issue 6 §3, §2
    services.app.handle_upstream("up", [booking(0, "a1")])
    raw = dump({**BOOKED, "id": "e2", "time": "2016-04-30T10:00:00Z",
                "data": {**BOOKED["data"], "starts_at": "2016-05-20T13:00:00Z"}})
    uow = services.app.handle_upstream("up", [ConsumedRecord(
        "t", 0, 1, b"p1", raw, message=parse_upstream(b"p1", raw, ()))])
    assert letters_of(uow) == []
    (timer,) = uow.effects.timers  # the confirmation went out; the 48 h reminder moved
    assert timer.step_index == 1 and timer.due_at.isoformat() == "2016-05-18T13:00:00+00:00"


async def test_a_record_whose_id_breaks_an_index_is_dead_lettered_not_retried_forever(
        services: Services) -> None:  # issue 6 §1: psycopg calls it an OperationalError
    good, poison = [booking(1, "a1"), booking(3, "a3")], booking(2, "too-long")

    def use_case(consumer: str, batch: Sequence[ConsumedRecord[UpstreamEvent]]) -> UnitOfWork:
        if any(r.message is not None and r.message.data.appointment_id == "too-long"  # type: ignore[union-attr]
               for r in batch):
            raise index_row_too_large()
        return services.app.handle_upstream(consumer, batch)

    await asyncio.wait_for(handle_batch("group", use_case, [good[0], poison, good[1]]), 60)
    assert [d.reason for d in query(services, dead_letters.listing)] == [
        "unprocessable: OperationalError: index row size 102416 exceeds btree maximum"]
    assert query(services, timers.count_due) == 2


def index_row_too_large() -> Exception:
    """The error eventsourcing raises for psycopg's ProgramLimitExceeded (SQLSTATE 54000)."""
    try:
        try:
            raise psycopg.errors.ProgramLimitExceeded(
                "index row size 102416 exceeds btree maximum")
        except psycopg.Error as exc:
            raise OperationalError(str(exc)) from exc
    except OperationalError as exc:
        return exc


async def test_a_record_whose_headers_postgresql_refuses_is_dead_lettered_without_them(
        services: Services) -> None:  # issue 6 §1: never stall a partition on one record
    refused = ConsumedRecord[UpstreamEvent]("t", 0, 9, b"p1", b"{oops",
                                            headers=(("bad\x00key", b"v"),),
                                            error="malformed message")
    await asyncio.wait_for(handle_batch("group", services.app.handle_upstream,
                                        [refused, booking(10, "a10")]), 60)
    (letter,) = query(services, dead_letters.listing)
    assert letter.offset == 9 and letter.headers == () and letter.value == b"{oops"
    assert "headers dropped" in letter.reason
    assert query(services, timers.count_due) == 1  # the booking behind it enrolled


async def test_record_after_record_failing_in_the_handler_is_a_bug_that_stops_the_process(
        services: Services) -> None:  # a bug must not dead-letter the whole stream
    def broken(consumer: str, batch: Sequence[ConsumedRecord[UpstreamEvent]]) -> UnitOfWork:
        if any(r.message is not None for r in batch):
            raise TypeError("a bug every record triggers")
        return services.app.handle_upstream(consumer, batch)

    breaker = Breaker(limit=5)
    batch = [booking(offset, f"a{offset}") for offset in range(12)]
    with pytest.raises(SystemicFailure, match="5 records in a row"):
        await handle_batch("group", broken, batch, breaker)
    assert query(services, dead_letters.count) == 4  # then it stopped dead-lettering
    with pytest.raises(SystemicFailure):
        await asyncio.wait_for(breaker.tripped(), 1)  # the supervisor's loop ends with it
