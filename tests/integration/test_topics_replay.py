"""`drip topics replay` on the real Kafka and PostgreSQL (§8 "re-consume an upstream topic
from an offset or timestamp without duplicating effects"): records consumed once, then
re-applied from offset 0, from an offset and from a time, leave the event store and every
read model as they were, including replies, opt-outs of one channel, details updated twice
and rescheduled appointments (each upstream event applies at most once to an aggregate:
the aggregates keep the ids of the events they applied)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from projections import registry
from projections.sql import rows
from services.adapters.clock import SimulatedClock
from services.adapters.publisher import BulkPublisher
from services.bootstrap import Services, build
from services.cli.ops import topics_app
from services.devtools.demo import define_campaigns
from services.devtools.replay import Replay, ends_of
from services.ops_replay import replay_consumer, replay_topic
from services.runtime import drain, running
from services.settings import Settings

T0 = datetime(2016, 5, 1, 10, tzinfo=UTC)
STARTS = "2016-05-10T13:00:00Z"
INLINE = ("due_timers", "active_enrollments", "patients", "campaign_states")
Record = tuple[str, bytes, bytes]  # (topic family, key, value)


def event(n: int, type_: str, hours: float, patient: str, **data: str | None) -> Record:
    family = {"appointment": "appointments", "patient": "patients",
              "message": "messages"}[type_.split(".")[0]]
    return family, patient.encode(), json.dumps({
        "id": f"e{n}", "source": "crm", "type": type_,
        "time": (T0 + timedelta(hours=hours)).isoformat(), "subject": patient,
        "clinicid": "vitoria", "data": {"patient_id": patient, **data}}).encode()


FIRST = [  # bookings and no-shows: reminders and recoveries start
    event(1, "appointment.booked", 0, "p1", appointment_id="a1", starts_at=STARTS),
    event(2, "appointment.missed", 0, "p2", appointment_id="a2"),
    event(3, "appointment.missed", 0, "p3", appointment_id="a3"),
    event(4, "appointment.booked", 0, "p4", appointment_id="a4", starts_at=STARTS),
    event(5, "appointment.missed", 0, "p6", appointment_id="a6"),
]
SECOND = [  # what stops them (§4), and a patient's details
    event(6, "patient.opted_out", 1, "p3", channel=None),
    event(7, "message.reply_received", 3, "p2", channel="sms", body="who is this?"),
    event(8, "appointment.cancelled", 2, "p4", appointment_id="a4"),
    event(9, "appointment.booked", 2.5, "p6", appointment_id="a7", starts_at=STARTS),
    event(10, "patient.updated", 4, "p1", email="p1@example.org"),
]


@dataclass
class Consumed:
    """When each wave began to be written to Kafka, and where its records landed."""

    began: list[datetime]
    metas: list[Any]

    def per_partition(self, topic: str) -> Counter[int]:
        return Counter(m.partition for m in self.metas if m.topic == topic)


async def consume(services: Services, clock: SimulatedClock,
                  *waves: Sequence[Record]) -> Consumed:
    """Publish each wave as upstream would, wait until the live consumer handled it and fire
    the steps due by then; then let the followers catch up."""
    upstream, replay = BulkPublisher(services.settings.kafka_bootstrap), Replay(services, clock)
    topics = {"appointments": services.topics.appointments,
              "patients": services.topics.patients, "messages": services.topics.messages}
    out = Consumed([], [])
    try:
        for wave in waves:
            out.began.append(datetime.now(UTC))
            metas = await upstream.send_many((topics[f], k, v) for f, k, v in wave)
            await replay.wait_handled(ends_of(metas))
            await replay.fire_until(max(json_time(v) for _, _, v in wave))
            out.metas += metas
    finally:
        await upstream.stop()
    await drain(services)
    return out


def json_time(value: bytes) -> datetime:
    """The event's time; T0 for a record that is not an event."""
    try:
        return datetime.fromisoformat(json.loads(value)["time"])
    except ValueError:
        return T0


def state(services: Services) -> dict[str, Any]:
    """The domain events and every row the records produced (the live group's positions
    included, the replay's not)."""
    tables = [*(t for p in registry.PROJECTIONS for t in p.tables), *INLINE, "dead_letters"]
    with services.pool.connection() as conn, conn.cursor() as cur:
        out: dict[str, Any] = {}
        for table in tables:
            cur.execute(f"SELECT * FROM {table}")
            out[table] = sorted(rows(cur), key=repr)
        cur.execute("SELECT * FROM consumer_positions WHERE consumer <> %s",
                    (replay_consumer(services.settings),))
        out["consumer_positions"] = sorted(rows(cur))
        cur.execute(f"SELECT count(*) FROM {services.app.recorder.events_table_name}")  # type: ignore[attr-defined]
        out["domain_events"] = rows(cur)[0][0]
    return out


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[tuple[Services, SimulatedClock]]:
    """The demo's clinic and campaigns, and every service running on a simulated clock."""
    clock = SimulatedClock(T0)
    services = build(settings, clock)
    define_campaigns(services)
    async with running(services):
        yield services, clock
    services.close()


async def test_replaying_every_upstream_topic_from_offset_zero_changes_nothing(
        live: tuple[Services, SimulatedClock]) -> None:  # §8
    services, clock = live
    await consume(services, clock, FIRST, SECOND)
    before = state(services)
    assert before["active_enrollments"] and before["enrollments"]  # some still run
    for family in ("appointments", "patients", "messages"):
        result = await replay_topic(services.settings, services.app, services.pool, family,
                                    from_offset=0)
        assert result.records == sum(f == family for f, _, _ in FIRST + SECOND)
        assert (result.domain_events, result.refused) == (0, 0)
    await drain(services)
    assert state(services) == before
    # and again: the replay's own positions are rewound, so every record is re-applied
    again = await replay_topic(services.settings, services.app, services.pool, "appointments",
                               from_offset=0)
    assert again.records == 7 and again.domain_events == 0


async def test_replaying_from_a_time_or_an_offset_takes_only_the_records_after_it(
        live: tuple[Services, SimulatedClock]) -> None:  # §8
    services, clock = live
    consumed = await consume(services, clock, FIRST, SECOND)
    before = state(services)
    # the records written to Kafka since the second wave began: the cancellation, the booking
    since = await replay_topic(services.settings, services.app, services.pool,
                               services.topics.appointments, from_time=consumed.began[1])
    assert since.records == 2 and since.domain_events == 0
    # from offset 1 in every partition: all but the first record of each
    from_one = await replay_topic(services.settings, services.app, services.pool,
                                  "appointments", from_offset=1)
    per_partition = consumed.per_partition(services.topics.appointments)
    assert from_one.records == sum(n - 1 for n in per_partition.values()) > 0
    assert from_one.domain_events == 0
    await drain(services)
    assert state(services) == before


async def test_a_record_refused_again_is_dead_lettered_once_under_the_replay_name(
        live: tuple[Services, SimulatedClock]) -> None:  # §8
    services, clock = live
    await consume(services, clock, [("patients", b"p9", b"{not json"), *FIRST[:1]])
    for _ in range(2):
        result = await replay_topic(services.settings, services.app, services.pool,
                                    "patients", from_offset=0)
        assert (result.records, result.refused, result.domain_events) == (1, 1, 0)
    await drain(services)
    with services.pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT consumer, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1")
        by_consumer = rows(cur)
    settings = services.settings
    assert by_consumer == [(settings.upstream_group, 1), (replay_consumer(settings), 1)]


SMS_OPT_OUT = event(21, "patient.opted_out", 1, "p1", channel="sms")


@pytest.mark.parametrize("history", [
    pytest.param([FIRST[0], event(22, "message.reply_received", 1, "p1", channel="sms")],
                 id="reply-to-an-enrollment-that-goes-on"),
    pytest.param([event(23, "message.reply_received", 0, "p2", channel="sms"),
                  event(24, "appointment.missed", 1, "p2", appointment_id="a2")],
                 id="reply-before-the-enrollment-began"),
    pytest.param([FIRST[0], SMS_OPT_OUT], id="opt-out-of-one-channel"),
    pytest.param([event(25, "patient.updated", 0, "p1", phone="+5527999990001"),
                  event(26, "patient.updated", 1, "p1", phone="+5527999990002")],
                 id="details-updated-twice"),
    pytest.param([FIRST[0], event(27, "appointment.booked", 1, "p1", appointment_id="a1",
                                  starts_at="2016-05-11T13:00:00Z")],
                 id="appointment-rescheduled"),
])
async def test_a_replay_records_no_domain_event_again(
        live: tuple[Services, SimulatedClock], history: list[Record]) -> None:  # §8
    services, clock = live
    await consume(services, clock, *([record] for record in history))  # in this order
    before = state(services)
    for family in sorted({f for f, _, _ in history}):
        await replay_topic(services.settings, services.app, services.pool, family,
                           from_offset=0)
    await drain(services)
    assert state(services)["domain_events"] == before["domain_events"]


def test_the_replay_command_re_applies_a_topic_with_a_progress_bar(settings: Settings) -> None:
    async def consumed() -> None:
        clock = SimulatedClock(T0)
        services = build(settings, clock)
        define_campaigns(services)
        async with running(services):
            await consume(services, clock, FIRST)
        services.close()

    asyncio.run(consumed())
    runner = CliRunner()
    env = settings.as_env()
    done = runner.invoke(topics_app, ["replay", "appointments", "--from-offset", "0"], env=env)
    assert done.exit_code == 0, done.output
    assert f"5 records of {settings.topic_prefix}.appointments.v1 re-applied" in done.output
    assert "0 new domain events, 0 refused" in done.output
    since = runner.invoke(topics_app, ["replay", "appointments", "--from-time",
                                       "2999-01-01T00:00:00Z"], env=env)
    assert since.exit_code == 0 and "0 records" in since.output, since.output
    unknown = runner.invoke(topics_app, ["replay", "step-due", "--from-offset", "0"], env=env)
    assert unknown.exit_code == 3 and "not an upstream topic" in unknown.output
    neither = runner.invoke(topics_app, ["replay", "appointments"], env=env)
    assert neither.exit_code == 2
