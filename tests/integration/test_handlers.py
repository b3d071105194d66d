"""Handlers on FastStream's in-memory TestKafkaBroker, with the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import psycopg
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from contracts.timers import StepDueV1
from domain.templates import appointment_reminders
from projections import dead_letters, timers
from services.application import Inbound
from services.bootstrap import build
from services.consumers import handle_batch, parse_upstream
from services.settings import Settings
from services.unit_of_work import UnitOfWork

BOOKED = {"id": "e1", "source": "crm", "type": "appointment.booked",
          "time": "2016-04-29T10:00:00Z", "subject": "p1", "clinic_id": "vitoria",
          "data": {"appointment_id": "a1", "patient_id": "p1",
                   "starts_at": "2016-05-04T13:00:00Z"}}


def dump(doc: dict) -> bytes:
    return json.dumps(doc).encode()


async def test_bad_records_are_dead_lettered_and_the_good_one_enrolls(settings: Settings) -> None:
    services = build(settings)
    services.app.define_campaign(appointment_reminders("vitoria", "America/Sao_Paulo"))
    refused: list[str] = []

    @services.broker.subscriber(services.topics.dead_letters)
    async def capture(body: Any, msg: KafkaMessage) -> None:
        refused.append(msg.headers["drip-dlq-reason"])

    async with TestKafkaBroker(services.broker) as broker:
        await broker.publish_batch(
            b"{not json", dump({**BOOKED, "type": "appointment.teleported"}),
            dump({**BOOKED, "clinic_id": "atlantis"}), dump(BOOKED),
            topic=services.topics.appointments)
    assert sorted(refused) == ["malformed message: message: Invalid JSON: key must be a string"
                               " at line 1 column 2", "unknown clinic 'atlantis'",
                               "unknown event type 'appointment.teleported'"]
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        assert timers.count_due(cur) == 1  # the confirmation step of the one enrollment


async def test_a_redelivered_batch_changes_nothing(settings: Settings) -> None:
    services = build(settings)
    services.app.define_campaign(appointment_reminders("vitoria", "America/Sao_Paulo"))
    async with TestKafkaBroker(services.broker) as broker:
        await broker.publish_batch(dump(BOOKED), topic=services.topics.appointments)
        events = services.app.recorder.max_notification_id()
        # the in-memory broker gives every record offset 0: this is the same record again
        await broker.publish_batch(dump({**BOOKED, "id": "e2", "data": {
            **BOOKED["data"], "appointment_id": "a2"}}), topic=services.topics.appointments)
    assert services.app.recorder.max_notification_id() == events


def test_records_at_or_below_the_recorded_position_are_skipped(settings: Settings) -> None:
    services = build(settings)
    services.app.define_campaign(appointment_reminders("vitoria", "America/Sao_Paulo"))
    batch = [Inbound("t", 0, offset, b"p1", dump(BOOKED), message=parse_upstream(dump(
        {**BOOKED, "data": {**BOOKED["data"], "appointment_id": f"a{offset}"}})))
        for offset in (5, 6)]
    assert services.app.handle_upstream("group", batch).recorded > 0
    uow = UnitOfWork(services.app)
    later = Inbound("t", 0, 7, b"p1", dump(BOOKED), message=batch[0].message)
    assert services.app.fresh("group", [*batch, later], uow) == [later]
    assert [(a.expected, a.position) for a in uow.effects.advances] == [(6, 7)]


async def test_a_record_that_breaks_the_handler_is_dead_lettered_and_the_rest_go_on(
        settings: Settings) -> None:
    services = build(settings)
    services.app.define_campaign(appointment_reminders("vitoria", "America/Sao_Paulo"))
    good = [Inbound("t", 0, offset, b"p1", b"{}", message=parse_upstream(dump(
        {**BOOKED, "data": {**BOOKED["data"], "appointment_id": f"a{offset}"}})))
        for offset in (1, 3)]
    poison = Inbound("t", 0, 2, b"p1", b"{}", message=parse_upstream(dump(
        {**BOOKED, "data": {**BOOKED["data"], "appointment_id": "boom"}})))

    def flaky_use_case(consumer: str, batch: Sequence[Inbound]) -> UnitOfWork:
        if any(r.message is not None and r.message.data.appointment_id == "boom" for r in batch):
            raise ValueError("a bug that only this record triggers")
        return services.app.handle_upstream(consumer, batch)

    async with TestKafkaBroker(services.broker):
        await handle_batch(services.broker, services.topics, "group",
                           flaky_use_case, [good[0], poison, good[1]])
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        assert [d.reason for d in dead_letters.listing(cur)] == [
            "unprocessable: ValueError: a bug that only this record triggers"]
        assert timers.count_due(cur) == 2  # both good bookings enrolled


def test_a_step_due_of_another_clinic_or_of_no_enrollment_is_dead_lettered(
        settings: Settings) -> None:  # §1: nothing crosses clinics
    services = build(settings)
    services.app.define_campaign(appointment_reminders("vitoria", "America/Sao_Paulo"))
    booked = services.app.handle_upstream("up", [Inbound("t", 0, 0, b"p1", dump(BOOKED),
                                                         message=parse_upstream(dump(BOOKED)))])
    timer = booked.effects.timers[0]
    due = StepDueV1(enrollment_id=timer.enrollment_id, clinic_id="elsewhere", patient_id="p1",
                    step_index=0, due_at=timer.due_at)
    stray = due.model_copy(update={"enrollment_id": uuid4(), "clinic_id": "vitoria"})
    uow = services.app.handle_step_due("steps", [Inbound("s", 0, 0, None, None, message=due),
                                                 Inbound("s", 0, 1, None, None, message=stray)])
    assert [d.reason for d in uow.effects.dead_letters] == [
        f"enrollment {timer.enrollment_id} is not of clinic 'elsewhere'",
        f"unknown enrollment {stray.enrollment_id}"]
    assert uow.recorded == 0
