"""Replays of the real data set through Kafka and PostgreSQL: deterministic, and exact
across a crash that makes Kafka redeliver everything (§7, §8, issue 2 §5)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from contracts.topics import Topics
from services.adapters.clock import SimulatedClock
from services.bootstrap import build
from services.devtools import dataset
from services.devtools.demo import define_campaigns, run_demo
from services.devtools.replay import END_OF_TIME, Replay, chunks
from services.runtime import drain, running
from services.settings import Settings
from tests.e2e.oracle import expected_report
from tests.reading import report as read_report
from tests.shared_data import CSV

ROWS = 1500


def no_progress(total: int) -> Callable[[int], None]:
    return lambda n: None


def check_invariants(report: dict) -> None:
    for name, c in report["campaigns"].items():
        for step, n in c["steps"].items():  # every enrollment reaches every step once
            assert n["sent"] + n["skipped"] == c["enrolled"], (name, step)
        assert c["completed"] + sum(c["stopped"].values()) == c["enrolled"], name


def test_two_replays_of_the_same_rows_give_identical_reports(settings: Settings) -> None:
    first = run_demo(settings, CSV, ROWS, no_progress)
    report = read_report(settings)
    # a different chunking must not change anything either: results follow event time
    second = run_demo(settings.model_copy(update={"replay_chunk": 333}),
                      CSV, ROWS, no_progress)
    assert read_report(settings) == report
    assert first.domain_events == second.domain_events
    check_invariants(report)
    # and the numbers are the ones an independent reading of the rules gives
    assert report == expected_report(CSV, ROWS)
    assert report["campaigns"]["no-show-recovery"]["stopped"]["appointment_booked"] > 0


async def rewind_consumer_groups(settings: Settings, topics: list[str]) -> None:
    """What a crash before the Kafka commit looks like: the group starts over at 0."""
    for group, names in ((settings.upstream_group, topics[:3]),
                         (settings.step_due_group, topics[3:4])):
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                    group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            # every partition drip created (partitions_for_topic may know none this early)
            parts = [TopicPartition(t, p) for t in names for p in range(settings.partitions)]
            consumer.assign(parts)
            await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in parts})
            assert {await consumer.committed(tp) for tp in parts} == {0}
        finally:
            await consumer.stop()


def test_a_crash_mid_run_and_full_redelivery_lose_and_duplicate_nothing(
        settings: Settings) -> None:
    asyncio.run(crash_and_recover(settings))
    interrupted = read_report(settings)
    sends = count_sends(settings)

    run_demo(settings, CSV, ROWS, no_progress)  # resets, then runs clean
    assert interrupted == read_report(settings)
    assert sends == count_sends(settings)
    assert sends[0] == sends[1]
    assert interrupted == expected_report(CSV, ROWS)


async def crash_and_recover(settings: Settings) -> None:
    timeline = dataset.timeline(CSV, ROWS)
    pieces = chunks(timeline, 300)
    # the interrupted run: services A handle half the pieces, then die with a piece in flight
    clock = SimulatedClock(timeline[0].time)
    a = build(settings, clock)
    define_campaigns(a)
    async with running(a):
        replay = Replay(a, clock)
        for piece in pieces[: len(pieces) // 2]:
            await replay.wait_handled(await replay.publish(piece))
            await replay.fire_until(piece[-1].time)
        in_flight = pieces[len(pieces) // 2]
        ends = await replay.publish(in_flight)
        await replay.producer.stop()
    a.close()
    await rewind_consumer_groups(settings, Topics(settings.topic_prefix).all)
    # services B start from the same database and topics, and finish the run
    clock_b = SimulatedClock(clock.now())
    b = build(settings, clock_b)
    async with running(b):
        replay = Replay(b, clock_b)
        await replay.wait_handled(ends)
        await replay.fire_until(in_flight[-1].time)
        for piece in pieces[len(pieces) // 2 + 1:]:
            await replay.wait_handled(await replay.publish(piece))
            await replay.fire_until(piece[-1].time)
        await replay.fire_until(END_OF_TIME)
        await replay.producer.stop()
        await drain(b)
    b.close()


def count_sends(settings: Settings) -> tuple[int, int]:
    """(MessageSent events, distinct (enrollment, step) among them): equal = none twice."""
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT count(*), count(DISTINCT (originator_id, convert_from(state, 'UTF8')::jsonb"
            " ->> 'step')) FROM drip_events WHERE topic LIKE '%MessageSent'").fetchone()
