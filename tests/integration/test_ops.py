"""Operators' commands on the real Kafka and PostgreSQL (issue 9, §8): a booking refused
for a clinic drip does not know yet is a dead letter (`drip dlq list | show`); once the
clinic and its campaign are applied, `drip dlq redrive` republishes it and it enrolls;
`drip enrollment history ID --at T` gives the events and the state at any past time;
`drip report` lists clinics apart, even with campaigns of the same name."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from domain.enrollment import Enrollment, enrollment_id
from projections import dead_letters
from services.adapters.publisher import BulkPublisher
from services.bootstrap import Services, build
from services.cli import app as cli
from services.runtime import drain, running
from services.settings import Settings
from tests.gallery import CLINIC, appointment_reminders

NOW = datetime.now(UTC).replace(microsecond=0)
runner = CliRunner()


def booking(n: int, clinic: str, appointment: str, patient: str) -> bytes:
    return json.dumps({
        "id": f"b{n}", "source": "booking", "type": "appointment.booked",
        "time": NOW.isoformat(), "subject": patient, "clinicid": clinic,
        "data": {"appointment_id": appointment, "patient_id": patient,
                 "starts_at": (NOW + timedelta(days=5)).isoformat()}}).encode()


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await asyncio.to_thread(check)):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)
    return found


def drip(*args: str) -> Any:
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    return settings


async def test_a_refused_booking_is_redriven_once_its_clinic_exists(env: Settings) -> None:
    services: Services = build(env)
    services.app.apply_clinic(CLINIC)
    services.app.define_campaign(appointment_reminders())
    publisher = BulkPublisher(env.kafka_bootstrap)
    try:
        async with running(services):
            await publisher.publish_many(services.topics.appointments, [
                (b"p1", booking(1, "aurora", "a1", "p1"), {}),
                (b"p2", booking(2, "vitoria", "a2", "p2"), {})])

            def letters() -> list[dead_letters.Entry]:
                with services.pool.connection() as conn, conn.cursor() as cur:
                    return dead_letters.entries(cur)
            [letter] = await until(letters)
            assert letter.letter.reason == "unknown clinic 'aurora'"
            listed = await asyncio.to_thread(drip, "dlq", "list")
            assert "unknown clinic 'aurora'" in listed
            shown = json.loads(await asyncio.to_thread(drip, "dlq", "show", str(letter.id)))
            assert shown["topic"] == services.topics.appointments
            assert (shown["partition"], shown["offset"]) == (letter.letter.partition,
                                                              letter.letter.offset)
            assert json.loads(shown["payload"])["clinicid"] == "aurora"

            # the fix ships: the clinic and its reminders are applied
            aurora = replace(CLINIC, clinic_id="aurora", name="Clínica Aurora")
            services.app.apply_clinic(aurora)
            theirs = replace(appointment_reminders(), clinic_id="aurora")
            cid = services.app.define_campaign(theirs)
            out = await asyncio.to_thread(drip, "dlq", "redrive", str(letter.id))
            assert (f"{letter.id}: redriven to {services.topics.appointments}"
                    f"[{letter.letter.partition}]@") in out  # the partition it came from

            def enrolled() -> Enrollment | None:
                found = services.app.repository.get(enrollment_id(cid, "a1")) \
                    if services.app.recorder.select_events(enrollment_id(cid, "a1")) else None
                return found
            e = await until(enrolled)
            assert (e.clinic_id, e.patient_id, e.status) == ("aurora", "p1", "active")
            again = await asyncio.to_thread(drip, "dlq", "redrive", str(letter.id))
            assert "already redriven" in again  # once, unless asked --again
            await drain(services)
            assert len(await asyncio.to_thread(letters)) == 1  # not refused a second time
            assert (await asyncio.to_thread(letters))[0].redriven_at is not None
    finally:
        await publisher.stop()
        services.close()

    report = await asyncio.to_thread(lambda: json.loads(drip("report", "--json")))
    assert sorted(report["clinics"]) == ["aurora", "vitoria"]
    for clinic in ("aurora", "vitoria"):  # same campaign name, counted apart
        assert report["clinics"][clinic]["campaigns"]["appointment-reminders"]["enrolled"] == 1
    one = await asyncio.to_thread(lambda: json.loads(drip("report", "--clinic", "aurora",
                                                          "--json")))
    assert list(one["campaigns"]) == ["appointment-reminders"] and one["dead_letters"] == 1
    text = await asyncio.to_thread(drip, "report")
    assert "clinic aurora" in text and "clinic vitoria" in text


def test_enrollment_history_at_any_past_time(env: Settings) -> None:
    services = build(env)
    try:
        services.app.apply_clinic(CLINIC)
        cid = services.app.define_campaign(appointment_reminders())
        enrollment, _ = services.app.enroll(
            "vitoria", cid, "p1", NOW, "test", appointment_id="a1",
            dates={"appointment.starts_at": NOW + timedelta(days=5)})
    finally:
        services.close()
    now = json.loads(drip("enrollment", "history", str(enrollment.id), "--json"))
    assert [e["event"] for e in now["events"]] == ["Enrolled", "StepScheduled"]
    assert now["state"]["status"] == "active"
    assert now["state"]["next_step"] == "confirmation"
    before = (NOW - timedelta(seconds=1)).isoformat()
    then = json.loads(drip("enrollment", "history", str(enrollment.id), "--at", before,
                           "--json"))
    assert then["events"] == [] and then["state"] is None
    table = drip("enrollment", "history", str(enrollment.id))
    assert "Enrolled" in table and "StepScheduled" in table
    missing = runner.invoke(cli, ["enrollment", "history", "0" * 8 + "-0000-0000-0000-" + "0" * 12])
    assert missing.exit_code == 3
