"""The services on the real Kafka broker and PostgreSQL: events in, read models out."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from contracts.messages import DispatchRequestedV1
from services.adapters.clock import SimulatedClock
from services.adapters.publisher import BulkPublisher
from services.bootstrap import Services, build
from services.devtools import dataset
from services.devtools.demo import define_campaigns
from services.devtools.replay import END_OF_TIME, Replay, ends_of
from services.runtime import drain, running
from services.settings import Settings
from tests.reading import report as read_report

HEADER = ("PatientId,AppointmentID,Gender,ScheduledDay,AppointmentDay,Age,Neighbourhood,"
          "Scholarship,Hipertension,Diabetes,Alcoholism,Handcap,SMS_received,No-show\n")
ROWS = [
    # P1 books A1 five days ahead and attends: confirmation, 48 h, day-of all sent
    "1,101,F,2016-04-25T09:00:00Z,2016-04-30T00:00:00Z,30,X,0,0,0,0,0,0,No",
    # P2 misses A2, then books A3 four days later: recovery stops after two sends
    "2,102,F,2016-04-20T09:00:00Z,2016-04-29T00:00:00Z,30,X,0,0,0,0,0,0,Yes",
    "2,103,F,2016-05-03T12:00:00Z,2016-05-10T00:00:00Z,30,X,0,0,0,0,0,0,No",
    # P3 books for the same day after 10:00 local: ignored, appointment_in_past
    "3,104,M,2016-04-29T15:00:00Z,2016-04-29T00:00:00Z,30,X,0,0,0,0,0,0,No",
]


def started(settings: Settings, start: datetime) -> tuple[Services, SimulatedClock]:
    clock = SimulatedClock(start)
    services = build(settings, clock)
    define_campaigns(services)
    return services, clock


async def test_upstream_events_on_kafka_end_as_projection_rows(settings: Settings,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n", encoding="utf-8")
    timeline = dataset.timeline(path)
    services, clock = started(settings, timeline[0].time)
    async with running(services):
        await Replay(services, clock).run(timeline)
        await drain(services)
    report = read_report(settings)
    reminders = report["campaigns"]["appointment-reminders"]
    recovery = report["campaigns"]["no-show-recovery"]
    assert reminders["enrolled"] == 3 and reminders["completed"] == 3
    assert reminders["steps"]["confirmation"] == {"sent": 3, "skipped": 0}
    # A3 (booked 7 days ahead): 48 h sent; A1 (5 days): sent; A2 (9 days): sent
    assert reminders["steps"]["reminder-48h"] == {"sent": 3, "skipped": 0}
    assert recovery["enrolled"] == 1 and recovery["stopped"] == {"appointment_booked": 1}
    # missed at 04-29 14:00 → sms 16:00, email 05-02 16:00; booking 05-03 stops the sms
    assert recovery["steps"] == {"we-missed-you": {"sent": 1, "skipped": 0},
                                 "rebook-nudge": {"sent": 1, "skipped": 0},
                                 "last-chance": {"sent": 0, "skipped": 1}}
    assert report["ignored"] == {"appointment_in_past": 1}
    # every send is a dispatch request on Kafka, keyed by patient, with its idempotency key
    sent = await read_topic(settings.kafka_bootstrap, services.topics.dispatch, 3 * 3 + 2)
    requests = [(key, DispatchRequestedV1.model_validate_json(value)) for key, value, _ in sent]
    assert all(key == r.patient_id.encode() for key, r in requests)
    assert all(r.idempotency_key == f"{r.enrollment_id}:{r.step}:1" for _, r in requests)
    assert len({r.idempotency_key for _, r in requests}) == 3 * 3 + 2
    recovery_sends = sorted((r.patient_id, r.due_at.isoformat(), r.step, r.channel, r.template)
                            for _, r in requests if r.template.startswith("recovery/"))
    assert recovery_sends == [
        ("2", "2016-04-29T16:00:00+00:00", "we-missed-you", "sms", "recovery/we-missed-you"),
        ("2", "2016-05-02T16:00:00+00:00", "rebook-nudge", "email", "recovery/rebook-nudge")]
    services.close()


async def test_bad_messages_go_to_the_dead_letter_topic_unchanged_and_consumption_goes_on(
        settings: Settings) -> None:  # §8
    services, clock = started(settings, datetime.fromisoformat("2016-04-01T00:00:00+00:00"))
    booked = {"id": "e1", "source": "crm", "type": "appointment.booked",
              "time": "2016-04-29T10:00:00Z", "subject": "p1", "clinic_id": "vitoria",
              "data": {"appointment_id": "a1", "patient_id": "p1",
                       "starts_at": "2016-05-04T13:00:00Z"}}
    teleported = json.dumps({**booked, "type": "appointment.teleported"}).encode()
    trace = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    upstream = BulkPublisher(settings.kafka_bootstrap)
    async with running(services):
        metas = [await upstream.publish_many(services.topics.appointments, [
            (b"p1", b"{not json", trace),
            (b"p1", teleported, {}),
            (b"p2", None, {}),  # a tombstone
            (b"p1", json.dumps(booked).encode(), {})])]
        await upstream.stop()
        ends = {(services.topics.appointments, p): o for p, o in metas[0]}
        await Replay(services, clock).wait_handled(ends)
        await drain(services)
    letters = await read_topic(settings.kafka_bootstrap, services.topics.dead_letters, 3)
    by_value = {v: (k, h) for k, v, h in letters}
    assert set(by_value) == {b"{not json", teleported, None}  # values unchanged, null stays null
    assert by_value[None][0] == b"p2" and by_value[teleported][0] == b"p1"  # original keys
    assert by_value[b"{not json"][1]["traceparent"] == trace[0][1].decode()  # original headers
    assert by_value[teleported][1]["drip-dlq-reason"] == (
        "unknown event type 'appointment.teleported'")
    assert by_value[teleported][1]["drip-dlq-topic"] == services.topics.appointments
    report = read_report(settings)
    assert report["dead_letters"] == 3
    assert report["campaigns"]["appointment-reminders"]["enrolled"] == 1
    services.close()


async def read_topic(bootstrap: str, topic: str,
                     n: int) -> list[tuple[bytes | None, bytes | None, dict[str, str]]]:
    """The first `n` records of `topic`: (key, value, headers)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        out: list[tuple[bytes | None, bytes | None, dict[str, str]]] = []
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(out)} of {n} records on {topic}"
            for records in batch.values():
                out += [(r.key, r.value, {k: v.decode() for k, v in r.headers})
                        for r in records]
        return out
    finally:
        await consumer.stop()


def envelope(event_id: str, type_: str, time: str, patient: str, **data: str | None) -> bytes:
    return json.dumps({"id": event_id, "source": "crm", "type": type_, "time": time,
                       "subject": patient, "clinic_id": "vitoria",
                       "data": {"patient_id": patient, **data}}).encode()


async def test_cancellations_replies_and_opt_outs_stop_what_they_concern(
        settings: Settings) -> None:  # §4, each on its own topic
    services, clock = started(settings, datetime.fromisoformat("2016-04-01T00:00:00+00:00"))
    t = services.topics
    starts = "2016-05-10T13:00:00Z"
    waves = [  # published in the order they happen, each wave handled before the next
        # P1 books A1 (confirmation due now); P2 and P3 each miss an appointment
        [(t.appointments, b"p1", envelope("1", "appointment.booked", "2016-05-01T10:00:00Z",
                                          "p1", appointment_id="a1", starts_at=starts)),
         (t.appointments, b"p2", envelope("2", "appointment.missed", "2016-05-01T10:00:00Z",
                                          "p2", appointment_id="a2")),
         (t.appointments, b"p3", envelope("3", "appointment.missed", "2016-05-01T10:00:00Z",
                                          "p3", appointment_id="a3"))],
        # P3 opts out of sms at 11:00; P2 replies at 13:00, after the 12:00 sms
        [(t.patients, b"p3", envelope("4", "patient.opted_out", "2016-05-01T11:00:00Z",
                                      "p3", channel="sms")),
         (t.messages, b"p2", envelope("5", "message.reply_received", "2016-05-01T13:00:00Z",
                                      "p2", channel="sms", body="who is this?"))],
        # P1 cancels A1; P3 opts out of everything after its 05-04 email
        [(t.appointments, b"p1", envelope("6", "appointment.cancelled", "2016-05-02T10:00:00Z",
                                          "p1", appointment_id="a1")),
         (t.patients, b"p3", envelope("7", "patient.opted_out", "2016-05-05T00:00:00Z",
                                      "p3", channel=None))],
    ]
    await publish_in_waves(services, clock, waves)
    report = read_report(settings)
    reminders = report["campaigns"]["appointment-reminders"]
    assert reminders["stopped"] == {"appointment_cancelled": 1}
    # the confirmation was due at booking, before the cancellation; the others were not
    assert reminders["steps"] == {"confirmation": {"sent": 1, "skipped": 0},
                                  "reminder-48h": {"sent": 0, "skipped": 1},
                                  "reminder-day-of": {"sent": 0, "skipped": 1}}
    recovery = report["campaigns"]["no-show-recovery"]
    assert recovery["stopped"] == {"responded": 1, "opted_out": 1}
    assert recovery["steps"] == {
        # P2's sms at 12:00 was sent before the 13:00 reply; P3 had opted out of sms at 11:00
        "we-missed-you": {"sent": 1, "skipped": 1},
        # P3's email on 05-04 12:00 still goes out: the opt-out was of sms only
        "rebook-nudge": {"sent": 1, "skipped": 1},
        "last-chance": {"sent": 0, "skipped": 2}}


async def publish_in_waves(services: Services, clock: SimulatedClock,
                           waves: list[list[tuple[str, bytes, bytes]]]) -> None:
    """Publish each wave as upstream would and wait until it is handled, then fire every
    step and let the followers catch up."""
    upstream = BulkPublisher(services.settings.kafka_bootstrap)
    async with running(services):
        replay = Replay(services, clock)
        for wave in waves:
            await replay.wait_handled(ends_of(await upstream.send_many(wave)))
        await upstream.stop()
        await replay.fire_until(END_OF_TIME)
        await drain(services)
    services.close()
