"""Each ready-made campaign of campaigns/ end to end: backtests through the real Kafka and
PostgreSQL, the real services and the simulated clock (issue 7 gallery and backtest)."""

from __future__ import annotations

import asyncio
import bisect
import csv
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice
from zoneinfo import ZoneInfo

import psycopg

from domain.enrollment import enrollment_id
from projections import campaign_stats
from services.adapters.clock import SimulatedClock
from services.bootstrap import build
from services.devtools.dataset import UpstreamRecord, starts_at
from services.devtools.demo import DEMO_CLINIC, GALLERY, define_campaigns, load_definitions, run_demo
from services.devtools.replay import Replay
from services.runtime import drain, running
from services.settings import Settings
from tests.reading import report as read_report
from tests.shared_data import CSV

ROWS = 2000
FROM_APPOINTMENTS = ["new-patient-welcome", "post-treatment-care", "recall-recare",
                     "re-engagement", "crm-email-sequence"]
H = timedelta(hours=1)


def no_progress(total: int) -> Callable[[int], None]:
    return lambda n: None


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def booked_after(rows: list[dict[str, str]]) -> Callable[[dict[str, str]], bool]:
    """Whether the row's patient booked again strictly after the row's outcome event."""
    bookings: dict[str, list[datetime]] = defaultdict(list)
    for r in rows:
        bookings[r["PatientId"]].append(_utc(r["ScheduledDay"]))
    for times in bookings.values():
        times.sort()

    def check(r: dict[str, str]) -> bool:
        times = bookings[r["PatientId"]]
        return bisect.bisect_right(times, starts_at(r["AppointmentDay"]) + H) < len(times)
    return check


def test_the_gallery_over_the_first_rows_of_the_data_set(settings: Settings) -> None:
    files = [GALLERY / f"{name}.yaml" for name in FROM_APPOINTMENTS]
    run_demo(settings, CSV, ROWS, no_progress, files, DEMO_CLINIC)
    report = read_report(settings)["campaigns"]
    rows = list(islice(csv.DictReader(CSV.open(encoding="utf-8")), ROWS))
    attended = [r for r in rows if r["No-show"] == "No"]
    missed = [r for r in rows if r["No-show"] == "Yes"]
    again = booked_after(rows)

    # §3: one enrollment per subject, for every trigger
    assert report["new-patient-welcome"]["enrolled"] == len({r["PatientId"] for r in rows})
    for name in ("post-treatment-care", "recall-recare", "re-engagement"):
        assert report[name]["enrolled"] == len(attended), name
    assert report["crm-email-sequence"]["enrolled"] == len(missed)
    for name, c in report.items():  # every enrollment ended, every way it did is counted
        assert c["completed"] + sum(c["stopped"].values()) == c["enrolled"], name

    # recall and re-engagement stop when the patient books again after the visit (§4)
    returned = sum(again(r) for r in attended)
    assert 0 < returned < len(attended)
    for name in ("recall-recare", "re-engagement"):
        assert report[name]["stopped"] == {"appointment_booked": returned}, name
    recall = report["recall-recare"]["steps"]
    assert recall["recall-invite"]["sent"] == recall["recall-reminder"]["sent"] \
        == len(attended) - returned

    # re-engagement: an A/B split, both offers sent, each to its own variant
    variants = report["re-engagement"]["variants"]["offer"]
    assert sum(v["assigned"] for v in variants.values()) == len(attended) - returned
    assert variants["discount"]["sent"] == {"offer-discount": variants["discount"]["assigned"],
                                           "last-call": variants["discount"]["assigned"]}
    assert variants["free-cleaning"]["sent"]["offer-free-cleaning"] \
        == variants["free-cleaning"]["assigned"]
    assert 0.4 < variants["discount"]["assigned"] / (len(attended) - returned) < 0.6

    # post-treatment care: nobody opted out of e-mail, so every review goes by e-mail
    care = report["post-treatment-care"]
    assert care["branches"] == {"review-channel": {"then": len(attended)}}
    assert care["steps"]["review-by-email"]["sent"] == len(attended)
    assert care["steps"]["review-by-sms"] == {"sent": 0, "skipped": 0}

    # welcome: the nudge goes to everyone (no one replies in the data set)
    welcome = report["new-patient-welcome"]
    assert welcome["branches"]["replied"] == {"else": welcome["enrolled"]}

    # the CRM sequence: linear, so every step is sent or skipped once per enrollment; the
    # progress of one that a booking stopped midway counts the e-mails it got (§3)
    crm = report["crm-email-sequence"]
    for step, n in crm["steps"].items():
        assert n["sent"] + n["skipped"] == crm["enrolled"], step
    assert crm["stopped"]["appointment_booked"] > 0
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT enrollment_id FROM enrollments e JOIN campaigns c USING"
                    " (campaign_id) WHERE c.name = 'crm-email-sequence' AND e.status = 'stopped'"
                    " ORDER BY enrollment_id LIMIT 1")
        (stopped,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM drip_events WHERE originator_id = %s"
                    " AND topic LIKE '%%MessageSent'", (stopped,))
        (sent,) = cur.fetchone()
        assert sent < 5
        assert campaign_stats.enrollment_progress(cur, stopped) == \
            f"{sent}/5 ({sent * 20} %)"


def benefits(seq: int, at: datetime, patient: str, expires: str) -> UpstreamRecord:
    return _record(seq, at, "patient.benefits_updated", patient, {
        "patient_id": patient, "remaining": "850.00", "currency": "BRL", "expires_on": expires})


def booking(seq: int, at: datetime, patient: str) -> UpstreamRecord:
    return _record(seq, at, "appointment.booked", patient, {
        "appointment_id": f"a{seq}", "patient_id": patient,
        "starts_at": (at + timedelta(days=3)).isoformat()})


def _record(seq: int, at: datetime, type_: str, patient: str, data: dict) -> UpstreamRecord:
    value = json.dumps({"specversion": "1.0", "id": f"e{seq}", "source": "insurer",
                        "type": type_, "time": at.isoformat(), "subject": patient,
                        "clinicid": "vitoria", "data": data}).encode()
    return UpstreamRecord(at, seq, type_, patient.encode(), value)


def test_benefits_expiry_reminds_60_30_and_7_days_before_and_follows_the_date(
        settings: Settings) -> None:
    start = datetime(2026, 1, 5, 15, tzinfo=UTC)
    timeline = sorted([
        benefits(1, start, "full", "2026-04-30"),          # 60, 30 and 7 days before
        benefits(2, start, "late", "2026-02-25"),          # 60 days before is already past
        benefits(3, start, "books", "2026-04-30"),
        booking(4, start + timedelta(days=70), "books"),   # after the 60-day e-mail
        benefits(5, start, "moved", "2026-04-30"),
        benefits(6, start + timedelta(days=10), "moved", "2026-09-30"),  # a new date
        benefits(7, start, "gone", "2025-12-31"),          # already expired
    ])
    clinic, campaigns = load_definitions([GALLERY / "benefits-expiry.yaml"])
    clock = SimulatedClock(start)
    services = build(settings, clock)
    try:
        asyncio.run(_replay(services, clock, timeline, clinic, campaigns))
        report = read_report(settings)
        c = report["campaigns"]["benefits-expiry"]
        assert c["enrolled"] == 4
        assert report["ignored"] == {"deadline_passed": 1}
        assert c["stopped"] == {"appointment_booked": 1}
        assert c["steps"] == {"sixty-days": {"sent": 3, "skipped": 1},
                              "thirty-days": {"sent": 3, "skipped": 1},
                              "seven-days": {"sent": 3, "skipped": 1}}
        moved = services.app.repository.get(enrollment_id(campaigns[0].id, "moved"))
        sends = [ev for ev in services.app.repository.event_store.get(moved.id)
                 if type(ev).__name__ == "MessageSent"]
        local = [ev.at.astimezone(ZoneInfo("America/Sao_Paulo")) for ev in sends]
        assert [f"{t:%Y-%m-%d %H:%M}" for t in local] == [
            "2026-08-01 09:00", "2026-08-31 09:00", "2026-09-23 09:00"]
        assert moved.attributes["benefits.remaining"] == str(Decimal("850.00"))
        with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
            booked = enrollment_id(campaigns[0].id, "books")  # stopped after one e-mail
            assert campaign_stats.enrollment_progress(cur, booked) == "1/3 (33 %)"
    finally:
        services.close()


async def _replay(services, clock, timeline, clinic, campaigns) -> None:  # type: ignore[no-untyped-def]
    define_campaigns(services, clinic, campaigns)
    async with running(services):
        replay = Replay(services, clock, chunk_size=2)
        await replay.run(timeline)
        await drain(services)
