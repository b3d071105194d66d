"""docs/integrating.md is true (§9, for upstream teams): every example in it is taken from
the file and run as written (only the broker, the topic prefix and the consumer group
are this test's own) against the real Kafka, with drip's real services consuming. The
four producers (kcat, confluent-kafka, the CloudEvents SDK in structured and in binary
mode) each enroll their appointment, on the partition Kafka's partitioner picks; a
dispatch request reads back with confluent-kafka and kcat; a record keyed wrongly is a
dead letter with its reason, and one with a null or non-UTF-8 header stalls nothing; the
documented attributes, topics, headers and content modes are the ones `contracts/`
validates and publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.partitioner import DefaultPartitioner
from eventsourcing.application import AggregateNotFoundError

from contracts import dead_letters as dlq
from contracts.appointments import AppointmentBooked, AppointmentBookedV1
from contracts.envelope import InvalidMessage
from contracts.messages import DispatchRequestedV1
from contracts.topics import Topics
from domain.enrollment import Enrollment, enrollment_id
from projections import dead_letters
from services.bootstrap import Services, asyncapi_document, build
from services.entrypoints.subscribers import parse_upstream
from services.runtime import running
from services.settings import Settings
from tests.gallery import CLINIC, appointment_reminders

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrating.md"
LOCAL_BOOTSTRAP = "127.0.0.1:19092"  # the local stack, as the examples say
STRUCTURED = [("content-type", b"application/cloudevents+json")]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def kcat_installed() -> None:
    """kcat is a Debian package: installed by scripts/tools.sh when missing, never skipped."""
    if shutil.which("kcat") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "tools.sh")], check=True)
    assert shutil.which("kcat"), "scripts/tools.sh did not install kcat"


def example(name: str) -> str:
    """The code block under `<!-- example: NAME -->` in docs/integrating.md."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```",
                      DOC.read_text(encoding="utf-8"), flags=re.S)
    assert found, f"docs/integrating.md has no example {name!r}"
    return found.group(1)


def pointed_at(code: str, settings: Settings) -> str:
    """The example as written, on this test's broker, topics and consumer group."""
    code = code.replace(LOCAL_BOOTSTRAP, settings.kafka_bootstrap)
    code = re.sub(r"\bdrip\.(?=[a-z-]+\.v\d)", f"{settings.topic_prefix}.", code)
    return code.replace("acme-dispatch-reader", f"{settings.consumer_prefix}.reader")


async def run_shell(name: str, settings: Settings, cwd: Path) -> str:
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-euo", "pipefail", "-c", pointed_at(example(name), settings)],
        cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{name}: {done.stderr}"
    return done.stdout


async def run_python(name: str, settings: Settings) -> dict[str, Any]:
    code = compile(pointed_at(example(name), settings), f"docs/integrating.md:{name}", "exec")
    namespace: dict[str, Any] = {"__name__": "__example__"}
    await asyncio.to_thread(exec, code, namespace)
    return namespace


@contextlib.asynccontextmanager
async def drip(settings: Settings) -> AsyncIterator[Services]:
    """`drip clinic apply campaigns/clinics/vitoria.yaml`, `drip campaign apply --activate
    campaigns/appointment-reminders.yaml` and `drip serve` (the same use cases, in process)."""
    services = build(settings)
    services.app.apply_clinic(CLINIC)
    campaign, _ = services.app.apply_campaign(appointment_reminders())
    services.app.change_status(campaign.id, "activate", datetime.now(UTC))
    try:
        async with running(services):
            yield services
    finally:
        services.close()


async def until(condition: Callable[[], object], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        await asyncio.sleep(0.05)


def enrollment(services: Services, appointment: str) -> Enrollment | None:
    try:
        found = services.app.repository.get(
            enrollment_id(appointment_reminders().id, appointment))
    except AggregateNotFoundError:  # not enrolled (yet)
        return None
    assert isinstance(found, Enrollment)
    return found


def confirmed(services: Services, appointment: str) -> bool:
    found = enrollment(services, appointment)
    return found is not None and found.sent_steps == ["confirmation"]


def dead_letter_count(services: Services) -> int:
    with services.pool.connection() as conn, conn.cursor() as cur:
        return int(dead_letters.count(cur))


async def read_topic(bootstrap: str, topic: str, n: int) -> list[ConsumerRecord]:
    """The first `n` records of `topic`, as aiokafka gives them (headers as raw bytes)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        out: list[ConsumerRecord] = []
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(out)} of {n} records on {topic}"
            out += [r for records in batch.values() for r in records]
        return out
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("name", "patient", "appointment"), [
    ("produce-kcat", "p-1001", "a-2001"),
    ("produce-confluent", "p-1002", "a-2002"),
    ("produce-cloudevents-structured", "p-1003", "a-2003"),
    ("produce-cloudevents-binary", "p-1004", "a-2004"),
])
async def test_each_documented_producer_enrolls_its_booking_and_its_confirmation_goes_out(
        settings: Settings, tmp_path: Path, name: str, patient: str, appointment: str) -> None:
    async with drip(settings) as services:
        if name == "produce-kcat":
            await run_shell(name, settings, tmp_path)
        else:
            await run_python(name, settings)
        # booked now, so the confirmation is due at once: the wall-clock timer sends it
        await until(lambda: confirmed(services, appointment), f"{appointment} confirmed")
        e = enrollment(services, appointment)
        assert e is not None
        assert (e.status, e.clinic_id, e.patient_id, e.subject) == (
            "active", "vitoria", patient, appointment)
        assert dead_letter_count(services) == 0
        (record,) = await read_topic(settings.kafka_bootstrap, services.topics.appointments, 1)
    # keyed by patient, on the partition Kafka's own partitioner (murmur2) picks for the key
    partitions = list(range(settings.partitions))
    assert record.key == patient.encode()
    assert record.partition == DefaultPartitioner()(record.key, partitions, partitions)


async def test_a_dispatch_request_reads_back_with_confluent_kafka_and_with_kcat(
        settings: Settings, tmp_path: Path) -> None:  # §6 outbound, as the guide reads it
    async with drip(settings) as services:
        await run_python("produce-confluent", settings)
        await until(lambda: services.dispatcher.relayed >= 1, "the dispatch request")
        confirmation = enrollment(services, "a-2002")
        assert confirmation is not None
        expected_key = f"{confirmation.id}:confirmation:1"

        (request,) = (await run_python("consume-confluent", settings))["received"]
        parsed = DispatchRequestedV1.model_validate(request)
        assert (parsed.patient_id, parsed.clinic_id, parsed.step, parsed.channel,
                parsed.template, parsed.idempotency_key) == (
            "p-1002", "vitoria", "confirmation", "sms", "reminders/confirmation", expected_key)

        line = json.loads(await run_shell("consume-kcat", settings, tmp_path))
        assert line["key"] == "p-1002"  # keyed by patient id
        assert DispatchRequestedV1.model_validate_json(line["payload"]) == parsed


async def test_a_booking_keyed_by_its_appointment_is_a_dead_letter_with_its_reason(
        settings: Settings, tmp_path: Path) -> None:  # §8: bad input, as the guide shows it
    async with drip(settings) as services:
        await run_shell("produce-kcat", settings, tmp_path)  # writes booked.json
        await run_shell("produce-bad-key", settings, tmp_path)
        await until(lambda: services.dead_letter_relay.relayed == 1, "the dead letter")
        out = await run_shell("consume-dead-letters", settings, tmp_path)
        await until(lambda: enrollment(services, "a-2001") is not None, "the good booking")
    reason = "the Kafka key must be the patient id (data.patient_id)"
    assert out.startswith("key: a-2001\n")
    assert f"{dlq.REASON}={reason}," in out
    assert f"{dlq.ORIGIN_TOPIC}={services.topics.appointments}," in out
    assert "content-type=application/cloudevents+json" in out  # the original headers stay
    assert f"value: {(tmp_path / 'booked.json').read_text()}" in out  # value unchanged
    sample = DOC.read_text(encoding="utf-8")
    assert f"{dlq.REASON}={reason}," in sample and f"| `{reason}` |" in sample


async def test_a_header_kafka_allows_but_utf8_does_not_never_stalls_the_partition(
        settings: Settings) -> None:  # §8: "consumption goes on"
    sample = json.loads(example("booked-json"))
    async with drip(settings) as services:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:  # a bad record with a null and a binary header, then a good one behind it
            await producer.send_and_wait(services.topics.appointments, b"{oops", key=b"p-1001",
                                         headers=[("x-null", None), ("x-raw", b"\xff\xfe")],
                                         partition=0)
            await producer.send_and_wait(services.topics.appointments,
                                         json.dumps(sample).encode(), key=b"p-1001",
                                         headers=[("x-raw", b"\xff")], partition=0)
        finally:
            await producer.stop()
        await until(lambda: enrollment(services, "a-2001") is not None, "the good booking")
        await until(lambda: services.dead_letter_relay.relayed == 1, "the dead letter")
        (letter,) = await read_topic(settings.kafka_bootstrap, services.topics.dead_letters, 1)
    assert (letter.key, letter.value) == (b"p-1001", b"{oops")
    headers = list(letter.headers)
    assert headers[:2] == [("x-null", b""), ("x-raw", b"\xff\xfe")]  # null recorded as empty
    assert dict(headers)[dlq.REASON].startswith(b"malformed message: invalid JSON")


def documented_fields() -> dict[str, str]:
    """The guide's attribute and data tables: `name` → `required` / `optional`."""
    rows = re.findall(r"^\| `([\w.]+)` \| (required|optional) \|", DOC.read_text(encoding="utf-8"),
                      flags=re.M)
    return dict(rows)


def without(document: dict[str, Any], name: str) -> dict[str, Any]:
    if name.startswith("data."):
        return {**document, "data": without(document["data"], name.removeprefix("data."))}
    return {k: v for k, v in document.items() if k != name}


def test_the_documented_event_is_what_the_contract_accepts_field_by_field() -> None:  # §9
    fields = documented_fields()
    contract = {f.validation_alias.choices[0] if f.validation_alias else name  # type: ignore[union-attr]
                for name, f in AppointmentBooked.model_fields.items()}
    data = {f"data.{name}" for name in AppointmentBookedV1.model_fields}
    assert contract | data <= set(fields), "a contract field the guide does not document"
    sample = json.loads(example("booked-json"))
    key = sample["subject"].encode()
    assert isinstance(parse_upstream(key, json.dumps(sample).encode(), STRUCTURED),
                      AppointmentBooked)
    for name, need in fields.items():
        raw = json.dumps(without(sample, name)).encode()
        if need == "optional":
            parse_upstream(key, raw, STRUCTURED)  # still accepted
            continue
        with pytest.raises(InvalidMessage) as refused:
            parse_upstream(key, raw, STRUCTURED)
        assert f"{name}: Field required" in refused.value.reason, name


def test_the_documented_topics_and_headers_are_drips_and_in_the_asyncapi_document() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(drip\.[a-z-]+\.v\d+)` \|", text, flags=re.M))
    topics = Topics("drip")
    assert table == set(topics.all)
    channels = asyncapi_document(Settings(topic_prefix="drip")).to_specification().channels
    assert {c.address for c in channels.values()} == table  # what `drip asyncapi` prints
    for header in (dlq.REASON, dlq.ORIGIN_TOPIC, dlq.ORIGIN_PARTITION, dlq.ORIGIN_OFFSET,
                   dlq.CONSUMER):
        assert f"`{header}`" in text


def test_the_content_type_header_decides_the_mode_as_the_guide_says() -> None:  # §9
    sample = json.loads(example("booked-json"))
    key, data = b"p-1001", json.dumps(sample["data"]).encode()
    attributes = [(f"ce_{k}", str(v).encode()) for k, v in sample.items()
                  if k not in ("data", "datacontenttype")]
    # structured, although ce_* headers came along (some producers copy them)
    both = [*attributes, *STRUCTURED]
    assert parse_upstream(key, json.dumps(sample).encode(), both).id == sample["id"]
    # binary, with or without a content-type
    for headers in (attributes, [*attributes, ("content-type", b"application/json")]):
        assert parse_upstream(key, data, headers).data.appointment_id == "a-2001"
    # neither: a plain JSON event is read as structured
    assert parse_upstream(key, json.dumps(sample).encode(), [
        ("content-type", b"application/json")]).clinic_id == "vitoria"
    # Kafka allows a header without a value: refused with its name, not a crash
    with pytest.raises(InvalidMessage, match="header ce_clinicid has no value"):
        parse_upstream(key, data, [*(h for h in attributes if h[0] != "ce_clinicid"),
                                   ("ce_clinicid", None)])  # type: ignore[list-item]
