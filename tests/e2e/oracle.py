"""An independent computation of the demo's expected report, straight from the CSV and
the rules of issue 2 §4, sharing no code with drip's domain: a check on the engine."""

from __future__ import annotations

import bisect
import csv
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

H, D = timedelta(hours=1), timedelta(days=1)
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def expected_report(path: Path, limit: int | None = None) -> dict:
    rows = list(islice(csv.DictReader(path.open(encoding="utf-8")), limit))
    bookings: dict[str, list[datetime]] = defaultdict(list)
    for r in rows:
        bookings[r["PatientId"]].append(_utc(r["ScheduledDay"]))
    for times in bookings.values():
        times.sort()
    remind, recover, ignored = Counter(), Counter(), 0
    for r in rows:
        booked, starts = _utc(r["ScheduledDay"]), _starts(r["AppointmentDay"])
        if starts <= booked:
            ignored += 1
        else:
            remind["enrolled"] += 1
            remind["48h"] += starts - 48 * H >= booked
            remind["day-of"] += starts - 3 * H >= booked
        if r["No-show"] == "Yes":
            began = starts + H
            times = bookings[r["PatientId"]]
            i = bisect.bisect_right(times, began)  # first booking strictly after the start
            first = times[i] if i < len(times) else None
            due = [began + 2 * H, began + 2 * H + 3 * D, began + 2 * H + 10 * D]
            # a booking at a step's due moment is handled first, so the step is skipped
            sent = [first is None or d < first for d in due]
            recover["enrolled"] += 1
            recover["stopped"] += not sent[-1]
            for name, s in zip(("we-missed-you", "rebook-nudge", "last-chance"), sent, strict=True):
                recover[name] += s
    n, m = remind["enrolled"], recover["enrolled"]
    return {
        "campaigns": {
            "appointment-reminders": {
                "enrolled": n, "completed": n, "stopped": {},
                "steps": {"confirmation": {"sent": n, "skipped": 0},
                          "reminder-48h": {"sent": remind["48h"], "skipped": n - remind["48h"]},
                          "reminder-day-of": {"sent": remind["day-of"],
                                              "skipped": n - remind["day-of"]}}},
            "no-show-recovery": {
                "enrolled": m, "completed": m - recover["stopped"],
                "stopped": {"appointment_booked": recover["stopped"]} if recover["stopped"] else {},
                "steps": {s: {"sent": recover[s], "skipped": m - recover[s]}
                          for s in ("we-missed-you", "rebook-nudge", "last-chance")}}},
        "ignored": {"appointment_in_past": ignored} if ignored else {},
        "dead_letters": 0,
    }


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _starts(appointment_day: str) -> datetime:
    day = datetime.strptime(appointment_day[:10], "%Y-%m-%d")
    return day.replace(hour=10, tzinfo=SAO_PAULO).astimezone(UTC)
